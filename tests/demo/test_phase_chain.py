"""The README's phase chain, command by command as printed there, in the SMOKE settings: mid-training (killed
after its first checkpoint and run again: it resumes, and its metrics.jsonl holds every step once), the export of
its newest checkpoint, post-training on that export, its export, test-time training on that. Each phase finds the
previous one's output and prints the next command, which is the README's next line.

The commands run in an empty folder that holds the repository's `verl/` (a link), so that `D=verl/...` means what
it means in the repository root while the run folders (`checkpoints/`) and exports land in the test's folder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY_PREFIX = re.compile(r"^(\x1b\[[0-9;]*m)?\([A-Za-z]+ pid=\d+\)(\x1b\[0m)? ")
ASSIGNMENT = re.compile(r"^(export )?[A-Z_]+=\S+$")


def readme_chain() -> tuple[list[str], list[str]]:
    """(the assignments, the commands) of the README block marked <!-- phase-chain -->."""
    text = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"<!-- phase-chain -->\n```bash\n(.*?)```", text, flags=re.S)
    assert match, "README.md has no <!-- phase-chain --> block"
    lines = [line.strip() for line in match.group(1).splitlines() if line.strip()]
    return [ln for ln in lines if ASSIGNMENT.match(ln)], [ln for ln in lines if not ASSIGNMENT.match(ln)]


def shell(prelude: list[str], command: str) -> list[str]:
    return ["bash", "-c", "\n".join(["set -euo pipefail", *prelude, command])]


def plain_lines(output: str) -> list[str]:
    return [RAY_PREFIX.sub("", line).strip() for line in output.strip().splitlines()]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_phase_chain_runs_as_written(tmp_path):
    prelude, commands = readme_chain()
    assert prelude[:2] == ["D=verl/examples/refine_trainer/demo", "export SMOKE=1"] and len(commands) == 5
    (tmp_path / "verl").symlink_to(REPO_ROOT / "verl")
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "TRAIN_FILES", "VAL_FILES", "CKPT_DIR",
                                                            "EXPERIMENT_NAME", "SMOKE_DIR", "REFINE_VERBOSE")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` is this environment's
    demo = prelude[0].split("=", 1)[1]

    def run(command: str) -> list[str]:
        # one stream, in the order a terminal shows it (the next command must be the very last line)
        done = subprocess.run(shell(prelude, command), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=900)
        output = done.stdout
        assert done.returncode == 0, f"{command}\n{output[-4000:]}"
        assert "Traceback" not in output and "DataLoader worker" not in output, output[-4000:]
        return plain_lines(output)

    # 1. mid-training, killed once its first checkpoint is written, then the same command again: it resumes
    mid = tmp_path / "checkpoints" / "ReFINE" / "midtrain_16k_tttrl"
    pointer = mid / "latest_checkpointed_iteration.txt"
    proc = subprocess.Popen(shell(prelude, commands[0]), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (pointer.exists() and pointer.read_text() == "1"):
        time.sleep(0.05)
    assert proc.poll() is None, "the mid-training finished (or failed) before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the script, the driver and Ray
    proc.wait(timeout=60)
    lines = run(commands[0])
    assert any(ln == f"refine: resuming from {mid / 'global_step_1'} (step 1)" for ln in lines), lines[-20:]
    assert not any("%s" in ln for ln in lines)  # verl's unformatted "Found checkpoint: %s" is not shown
    trained = [r["step"] for r in records(mid) if "training/global_step" in r["data"]]
    assert trained == [1, 2]  # every step once: the one before the kill kept, none twice
    last = records(mid)[-1]["data"]
    assert {"val_loss", "val_em_score", "reward/cs_reward_mean", "actor/sft_loss_ttt", "actor/pg_loss_ttt"} <= set(last)
    assert -1.0 <= last["reward/cs_reward_mean"] <= 1.0 and 0.0 <= last["val_em_score"] <= 1.0
    assert (mid / "metrics.png").stat().st_size > 1000
    newest = int(pointer.read_text())
    # its last line: the export of its newest checkpoint
    assert lines[-1].startswith(f"next: python -m refine.export {mid / f'global_step_{newest}'} "), lines[-1]

    # 2. the export the README names finds that checkpoint and names the README's next command
    lines = run(commands[1])
    given = Path(commands[1].split()[3])  # the run folder as the README gives it (relative to the folder run in)
    assert (tmp_path / given).resolve() == mid.resolve()
    assert f"refine.export: reading {given / f'global_step_{newest}' / 'actor'} (world size 1)" in lines
    assert lines[-1] == f"refine.export: next: {commands[2].replace('$D', demo)}"

    # 3. post-training on the export
    lines = run(commands[2])
    post = tmp_path / "checkpoints" / "ReFINE" / "posttrain_8k_tttrl"
    import yaml

    resolved = yaml.safe_load((post / "resolved_config.yaml").read_text())
    assert resolved["actor_rollout_ref"]["model"]["path"] == str(tmp_path / "exports" / "midtrained_hf")
    post_records = records(post)
    assert [r["step"] for r in post_records if "training/global_step" in r["data"]] == [1, 2]
    # inner loop with the hybrid reward, outer task SFT, then validation by generation with the RULER scorer
    last = post_records[-1]["data"]
    assert {"reward/hybrid_reward_mean", "actor/sft_loss_ttt", "actor/sft_loss", "val_reward"} <= set(last)
    assert 0.0 <= last["val_reward"] <= 1.0 and -1.0 <= last["reward/hybrid_reward_mean"] <= 2.0
    assert lines[-1].startswith(f"next: python -m refine.export {post / 'global_step_2'} ")

    # 4. its export, then 5. test-time training on that
    lines = run(commands[3])
    assert lines[-1] == f"refine.export: next: {commands[4].replace('$D', demo)}"
    lines = run(commands[4])
    ttt = tmp_path / "checkpoints" / "ReFINE" / "testtimetrain_16k_tttrl"
    ttt_records = records(ttt)
    assert not any("training/global_step" in r["data"] for r in ttt_records)  # val_only: no training step
    assert len(ttt_records) == 1 and ttt_records[0]["step"] == 0
    assert 0.0 <= ttt_records[0]["data"]["val_reward"] <= 1.0
    assert (ttt / "predictions" / "step_0.jsonl").is_file()
    assert "refine: done: validation in" in "\n".join(lines)  # the last phase: a summary and no next command
    assert not any(ln.startswith("next:") for ln in lines)
