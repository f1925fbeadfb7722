"""`make demo`'s command as a newcomer meets it: `python -m refine.main` with no arguments (12 steps), its console,
its run record, a rerun from that record, and the two runs listed and compared by `python -m refine.runs`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

RAY_PREFIX = re.compile(r"^(\x1b\[[0-9;]*m)?\([A-Za-z]+ pid=\d+\)(\x1b\[0m)? ")
SECRET = "wandb-key-0123456789abcdef"
COMPARED = ("reward/", "actor/ntp_loss", "actor/pg_loss", "val_loss", "val_em_score")


def refine_main(*args: str, cwd: Path, **env_vars: str) -> str:
    env = {**os.environ, "WANDB_API_KEY": SECRET, **env_vars}
    env.pop("REFINE_VERBOSE", None)
    done = subprocess.run([sys.executable, "-m", "refine.main", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900, cwd=cwd, env=env)  # as a terminal shows it
    output = done.stdout
    (cwd / f"console_{len(list(cwd.glob('console_*')))}.txt").write_text(output)  # to read when a test fails
    assert done.returncode == 0, output[-4000:]
    return output


def steps(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["data"] for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """The demo (12 steps), then its record rerun for 4 steps in another folder, logging to wandb too (offline, as
    no test reaches the network): (runs folder, console, a, b)."""
    tmp = tmp_path_factory.mktemp("demo_runs")
    a, b = tmp / "runs" / "demo", tmp / "runs" / "rerun"
    console = refine_main(f"trainer.default_local_dir={a}", cwd=tmp)
    rerun = refine_main("--config", str(a / "resolved_config.yaml"), f"trainer.default_local_dir={b}",
                        "trainer.total_training_steps=4", "trainer.logger=[console,wandb]", cwd=tmp,
                        WANDB_MODE="offline")
    assert "Traceback" not in rerun and not (tmp / "wandb").exists()  # wandb shut down in order, its folder ...
    assert any((b / "wandb").iterdir())  # ... inside the run folder
    return tmp / "runs", console, a, b


@pytest.mark.slow
def test_the_demo_console_is_a_line_per_step_and_a_summary(demo_runs):
    _, console, a, _ = demo_runs
    lines = console.strip().splitlines()
    assert len(lines) <= 60 and len(console) <= 8000, (len(lines), len(console))
    noisy = [ln for ln in lines if "Traceback" in ln or re.search(r"\w*(Warning|Error)\b", ln)
             or "MFU" in ln or "ray init kwargs" in ln]
    assert not noisy, noisy[:5]
    text = [RAY_PREFIX.sub("", line) for line in lines]
    logged = steps(a)
    for step in range(1, 13):  # every step's rewards and NTP loss, as the metrics file has them
        (line,) = [ln for ln in text if ln.startswith(f"step {step}/12 |")]
        data = logged[step]
        assert f"cosine reward {data['reward/cs_reward_mean']:.3f}" in line, line
        assert f"exact match {data['reward/binary_reward_mean']:.3f}" in line, line
        assert f"NTP loss {data['actor/ntp_loss_raw_ttt']:.3f}" in line, line
    (done,) = [i for i, ln in enumerate(text) if ln.startswith("refine: done: step 12/12")]
    assert text[done + 1].strip().startswith(f"run folder: {a} (metrics.jsonl, metrics.png, resolved_config.yaml")
    assert text[done + 2].strip() == f"rerun: python -m refine.main --config {a / 'resolved_config.yaml'}"
    assert (a / "metrics.png").stat().st_size > 1000
    assert json.loads((a / "run_state.json").read_text())["state"] == "finished"


@pytest.mark.slow
def test_the_record_masks_nothing_but_secrets_and_reruns_the_run(demo_runs):
    _, _, a, b = demo_runs
    assert "***" not in (a / "resolved_config.yaml").read_text()  # no secret in the demo's config
    for path in [p for run in (a, b) for p in run.rglob("*") if p.is_file()]:  # the key from the environment
        assert SECRET.encode() not in path.read_bytes(), path                # is nowhere, wandb's files included
    first, again = steps(a), steps(b)
    assert sorted(again) == [0, 1, 2, 3, 4]
    for step in again:
        for key, value in first[step].items():
            if key.startswith(COMPARED) and "memory" not in key:
                assert again[step][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)


@pytest.mark.slow
def test_runs_are_listed_and_compared_in_a_table_and_one_plot(demo_runs):
    root, _, a, b = demo_runs

    def runs_cli(*args):
        done = subprocess.run([sys.executable, "-m", "refine.runs", *args], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    listing = runs_cli(str(root))
    rows = {line.split()[0]: line.split() for line in listing[2:]}
    assert rows["demo"][1:4] == ["midtrain", "12", "finished"] and rows["rerun"][1:4] == ["midtrain", "4", "finished"]
    out = root / "compare.png"
    table = runs_cli("compare", str(a), str(b), "--metrics", "reward/cs_reward_mean", "val_loss", "--out", str(out))
    cells = {line.split()[0]: line.split()[1:] for line in table[2:] if line.strip() and not line.startswith("plot")}
    assert cells["steps"] == ["12", "4"]
    assert float(cells["val_loss"][0]) == pytest.approx(steps(a)[12]["val_loss"], rel=1e-3)
    assert float(cells["val_loss"][1]) == pytest.approx(steps(b)[4]["val_loss"], rel=1e-3)
    assert table[-1] == f"plot: {out}"
    import matplotlib.image

    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (330, 760)  # two panels of 3.8 x 3.3 inches at 100 dpi
    assert image[..., :3].std() > 0.05  # not blank: the lines are drawn
