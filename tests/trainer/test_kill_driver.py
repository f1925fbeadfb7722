"""The driver process of a real mid-training run (Ray, CPU), stopped from outside, then the same command again: the
signals a cluster sends before it ends a job (SIGUSR1, SIGTERM, and more of them while the checkpoint is written)
and a SIGKILL of its process group. The resumed run equals the uninterrupted one (every compared metric of every
step), each signal leaves a complete checkpoint of the step in progress and the documented exit status, and no
process of the run is left after a signal or a failure. Also the one-line messages for a dead worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS = 7
NO_PERIODIC = 100  # save_freq above the run's length: checkpoints only on a signal and at the end
COMMAND = [sys.executable, "-m", "refine.main", "+preset=embedded_demo", "trainer.test_freq=-1", "data.max_prompt_length=64", "data.train_batch_size=2",
           "refine.mini_batch_size=2", "trainer.val_before_train=false", "trainer.resume_mode=auto"]
COMPARED = ("reward/", "actor/", "critic/")


def command(run_dir: Path, save_freq: int, steps: int = STEPS) -> list[str]:
    return COMMAND + [f"trainer.total_training_steps={steps}", f"trainer.save_freq={save_freq}",
                      f"trainer.default_local_dir={run_dir}"]


def run(run_dir: Path, save_freq: int = NO_PERIODIC, timeout=400) -> subprocess.CompletedProcess:
    result = subprocess.run(command(run_dir, save_freq), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def metrics(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["data"] for r in map(json.loads, lines) if "training/global_step" in r["data"]}


def assert_same_steps(got: dict[int, dict], expected: dict[int, dict], steps) -> None:
    for step in steps:
        for key, value in expected[step].items():
            if key.startswith(COMPARED) and "memory" not in key:
                assert got[step][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)


def session_processes(session: int) -> list[str]:
    """Command lines of the live processes of a session (the driver started one: Ray's processes stay in it)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session and fields[0] != "Z":
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while being read
    return found


def assert_nothing_left(session: int, grace_s: float = 60) -> None:
    """Ray's own shutdown (at the driver's exit) ends the run's processes; on 2 busy cores it can take a while."""
    deadline = time.time() + grace_s
    while session_processes(session) and time.time() < deadline:
        time.sleep(0.2)
    assert session_processes(session) == [], f"processes of the run left {grace_s:g} s after it ended"


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout=300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"the run ended (status {proc.poll()}) or timed out before {what}")


def logged_step(run_dir: Path, step: int) -> bool:
    path = run_dir / "metrics.jsonl"
    return path.exists() and any(json.loads(line)["step"] == step for line in path.read_text().splitlines()
                                 if '"training/global_step"' in line)


def stop_with(run_dir: Path, since: int, first: signal.Signals, more=()) -> int:
    """Run the command; once step `since + 1` is logged send `first` to the driver alone (as the launchers forward
    it), then `more` every 0.1 s until it exits. Checks the stop (status, line, verified checkpoint of the step, no
    process left); returns the step it stopped after."""
    from refine.driver.checkpoints import COMPLETION_RECORD, damage
    from refine.driver.preemption import PREEMPTED_EXIT_STATUS, STOP_FILE

    log = run_dir.parent / f"stop_after_{since}.err"  # a file, not a pipe: a full pipe would stall the run
    with open(log, "w") as err_file:
        proc = subprocess.Popen(command(run_dir, NO_PERIODIC), stdout=subprocess.DEVNULL, stderr=err_file,
                                start_new_session=True)
    wait_for(lambda: logged_step(run_dir, since + 1), proc, f"step {since + 1} was logged")
    proc.send_signal(first)
    # the next signals follow once the first one's request is written (so the stop names the first)
    wait_for(lambda: (run_dir / STOP_FILE).exists() or not more, proc, "the stop was requested")
    sent = 0
    # more signals until the stop's checkpoint is complete (its record written): during the save, that is
    while more and proc.poll() is None and not any(
            (folder / COMPLETION_RECORD).exists() for folder in run_dir.glob("global_step_*")
            if int(folder.name.split("_")[-1]) > since):
        time.sleep(0.1)
        proc.send_signal(more[sent % len(more)])
        sent += 1
    proc.wait(timeout=300)
    err = log.read_text()
    assert proc.returncode == PREEMPTED_EXIT_STATUS, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("refine: stopped after step ") and f" on {first.name} (preemption" in last, last
    step = int(last.split("stopped after step ")[1].split()[0])
    # the step in progress when the request is read (on busy cores possibly a later one); never a save point here
    # (no periodic checkpoint before the end)
    assert since + 1 <= step < STEPS and f"the checkpoint {run_dir / f'global_step_{step}'} is complete" in last
    assert damage(run_dir / f"global_step_{step}") is None  # every file as its completion record says
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text() == str(step)
    assert sorted(metrics(run_dir)) == list(range(1, step + 1))
    assert not more or "received again: ignored" in err
    assert_nothing_left(proc.pid)
    return step


@pytest.mark.slow
def test_the_driver_stopped_by_signals_and_by_sigkill_resumes_each_time_like_the_uninterrupted_run(tmp_path):
    """One run folder, the same command each time, no periodic checkpoint (every stop falls between save points).
    Run 1: SIGUSR1 once step 1 is logged. Run 2: SIGTERM once its first step is logged, then SIGUSR1 / SIGTERM every
    0.1 s until the checkpoint it stops with is complete (during the save). Each stops after the step in progress with a complete checkpoint of
    it, status 75, one line, and no process left. Run 3 (trainer.save_freq=1, not part of what makes the run the
    same): SIGKILL of its process group once it has checkpointed a step. Run 4 finishes: every step equals the
    uninterrupted run's. Last, with every checkpoint damaged, the same run asked to go on fails in one line with
    status 3, loads nothing and leaves no process behind."""
    full = tmp_path / "full"
    run(full)
    expected = metrics(full)
    run_dir = tmp_path / "run"
    first = stop_with(run_dir, 0, signal.SIGUSR1)
    second = stop_with(run_dir, first, signal.SIGTERM, (signal.SIGUSR1, signal.SIGTERM))
    assert second + 1 < STEPS, "no step left for the SIGKILL"

    proc = subprocess.Popen(command(run_dir, 1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    pointer = run_dir / "latest_checkpointed_iteration.txt"
    wait_for(lambda: int(pointer.read_text().strip() or 0) > second, proc, "a step was checkpointed")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started (Ray included)
    proc.wait(timeout=30)
    killed_at = int(pointer.read_text())
    assert second < killed_at < STEPS

    final = run(run_dir)
    assert f"global_step_{killed_at}" in final.stdout + final.stderr  # it resumed from there
    got = metrics(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1)) and 1 <= first < second
    assert_same_steps(got, expected, range(1, STEPS + 1))

    for folder in run_dir.glob("global_step_*"):
        (folder / "data.pt").write_bytes((folder / "data.pt").read_bytes()[:-1])
    # one step longer: the same run asked to go on, which the run-folder check lets through to the resume
    with open(tmp_path / "failure.err", "w") as err_file:
        proc = subprocess.Popen(command(run_dir, NO_PERIODIC, STEPS + 1), stdout=subprocess.DEVNULL, stderr=err_file,
                                start_new_session=True)
    proc.wait(timeout=300)
    err = (tmp_path / "failure.err").read_text()
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 3 and last.startswith(f"refine: no checkpoint in {run_dir} can be loaded: "), err[-3000:]
    assert "Nothing was loaded" in last and f"global_step_{STEPS}/data.pt has " in last
    assert_nothing_left(proc.pid)


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
