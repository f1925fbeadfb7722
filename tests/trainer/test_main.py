"""`python -m refine.main`: the embedded default and the Hydra entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_no_arguments_selects_the_embedded_default(monkeypatch):
    import refine.main as entry

    seen = {}
    monkeypatch.setattr(sys, "argv", ["refine.main"])
    monkeypatch.setattr(entry, "_hydra_main", lambda: seen.setdefault("argv", list(sys.argv)))
    entry.main()
    assert entry.DEMO_PRESET in seen["argv"]


@pytest.mark.slow
def test_main_runs_the_embedded_default_end_to_end(tmp_path):
    """The README run command on the embedded default, shortened to one step so the suite stays fast."""
    result = subprocess.run(
        [sys.executable, "-m", "refine.main", "+preset=embedded_demo", "trainer.total_training_steps=1",
         "trainer.test_freq=1", "data.max_prompt_length=64", f"trainer.default_local_dir={tmp_path}"],
        capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert f"metrics: {tmp_path}/metrics.jsonl" in out and f"plot:    {tmp_path}/metrics.png" in out
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    assert "val_loss" in records[0]["data"] and "reward/cs_reward_mean" in records[1]["data"]
    assert (tmp_path / "metrics.png").stat().st_size > 1000


def test_device_auto_resolves_and_explicit_cuda_on_a_cpu_host_is_one_clear_error():
    import torch

    import refine.main as entry
    from refine.stack import StackError

    config = entry.compose(["+preset=embedded_demo", "trainer.device=auto"])
    entry.prepare(config)
    assert config.trainer.device == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    config = entry.compose(["+preset=embedded_demo", "trainer.device=cuda"])
    with pytest.raises(StackError, match=r"trainer.device=cuda was requested but .*set trainer.device=cpu"):
        entry.prepare(config)


def test_explicit_cuda_on_a_cpu_host_exits_with_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    import os

    # a clean environment: earlier tests in this process may have exported the verl plugin variables
    env = {name: value for name, value in os.environ.items() if not name.startswith("VERL_")}
    result = subprocess.run([sys.executable, "-m", "refine.main", "+preset=embedded_demo", "trainer.device=cuda"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "trainer.device=cuda" in lines[0] and "Traceback" not in result.stderr, result.stderr
