"""A real SIGKILL of the driver process group in the middle of a mid-training run, then the same command again:
the resumed run equals an uninterrupted one (every compared metric of the steps after the kill). Also the
one-line messages for a dead worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

COMMAND = [sys.executable, "-m", "refine.main", "+preset=embedded_demo", "trainer.total_training_steps=4",
           "trainer.test_freq=-1", "trainer.save_freq=1", "data.max_prompt_length=64", "data.train_batch_size=2",
           "refine.mini_batch_size=2", "trainer.val_before_train=false"]
COMPARED = ("reward/", "actor/", "critic/")


def run(run_dir: Path, timeout=400):
    result = subprocess.run(COMMAND + [f"trainer.default_local_dir={run_dir}"], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


def metrics(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["data"] for r in map(json.loads, lines) if "training/global_step" in r["data"]}


@pytest.mark.slow
def test_sigkill_of_the_driver_then_resume_equals_the_uninterrupted_run(tmp_path):
    run(tmp_path / "full")
    expected = metrics(tmp_path / "full")
    cut = tmp_path / "cut"
    proc = subprocess.Popen(COMMAND + [f"trainer.default_local_dir={cut}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    pointer = cut / "latest_checkpointed_iteration.txt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and pointer.read_text().strip() == "2":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started (Ray included)
    proc.wait(timeout=30)
    killed_at = int(pointer.read_text())
    assert killed_at >= 2
    run(cut)
    got = metrics(cut)
    assert sorted(got) == [1, 2, 3, 4]
    for step in range(killed_at + 1, 5):
        for key, value in expected[step].items():
            if key.startswith(COMPARED) and "memory" not in key:
                assert got[step][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)


def test_a_dead_worker_is_one_line_that_says_how_to_resume(tmp_path):
    from types import SimpleNamespace

    from ray.exceptions import ActorDiedError

    from refine.driver.checkpoints import record_completion
    from refine.main import dead_worker_message, worker_died

    folder = tmp_path / "global_step_3"
    (folder / "actor").mkdir(parents=True)
    (folder / "actor" / "model.pt").write_bytes(b"w")
    (folder / "data.pt").write_bytes(b"d")
    (folder / "refine_state.pt").write_bytes(b"s")
    record_completion(folder, 3)
    config = SimpleNamespace(trainer=SimpleNamespace(default_local_dir=str(tmp_path)))

    class Wrapped(RuntimeError):  # how the error reaches the entry point: wrapped by the task runner's task
        cause = ActorDiedError()

    assert worker_died(Wrapped("task failed")) and not worker_died(ValueError("x"))
    message = dead_worker_message(ActorDiedError(), config)
    assert "a worker process died" in message and str(folder) in message
    assert "trainer.resume_mode=auto" in message and "\n" not in message
