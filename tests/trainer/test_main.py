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


# The embedded default end to end (`make demo`'s command, its console, record and files): tests/demo/test_demo_run.py


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


def test_help_lists_every_refine_field_with_its_default_and_doc():
    """Each field's line carries its default (from the dataclass) and is followed by its own doc."""
    import dataclasses

    from refine.main import help_text
    from refine.preflight.schema import RefineConfig

    lines = help_text().splitlines()
    for field in dataclasses.fields(RefineConfig):
        (at,) = [i for i, line in enumerate(lines) if line.startswith(f"  refine.{field.name} = ")]
        assert lines[at].split(" = ", 1)[1].split("  [")[0] == repr(field.default), field.name
        doc = []
        for line in lines[at + 1:]:
            if not line.startswith("      "):
                break
            doc.append(line.strip())
        assert field.metadata["help"] and " ".join(doc).startswith(field.metadata["help"]), field.name
    assert "  refine.reward = None  [official: +actor_rollout_ref.actor.ttt_reward]" in lines
    assert len(lines) < 150  # not verl's 1,100 lines


def test_cfg_job_works_after_an_override():
    result = subprocess.run([sys.executable, "-m", "refine.main", "refine.reward=binary", "--cfg", "job"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "  reward: binary" in result.stdout and "embedded_demo" not in result.stderr


@pytest.mark.slow
def test_an_override_alone_runs_the_embedded_default_with_it(tmp_path):
    """`python -m refine.main refine.reward=binary` (plus a short run): the demo trains on the binary reward."""
    result = subprocess.run(
        [sys.executable, "-m", "refine.main", "refine.reward=binary", "trainer.total_training_steps=1",
         "trainer.test_freq=-1", "trainer.val_before_train=false", "data.max_prompt_length=64",
         f"trainer.default_local_dir={tmp_path}"],
        capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["data"]
    assert record["critic/score/mean_ttt"] == record["reward/binary_reward_mean"]
    assert record["critic/score/mean_ttt"] != record["reward/cs_reward_mean"]
    assert (tmp_path / "resolved_config.yaml").exists()
