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
