"""Stopping on SIGUSR1 / SIGTERM without Ray: the driver's handler (first signal requests the stop, later ones are
ignored, kept over ray.init's own SIGTERM handler), and RefineTrainer's loop on stand-in batches: the step in
progress finishes, its checkpoint is complete (its files match the record), `Preempted` says why, and a second signal
in the middle of the save does not cut it short. The whole path through Ray: tests/trainer/test_kill_driver.py."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from refine.driver.checkpoints import POINTER_FILE, damage, repair_latest
from refine.driver.preemption import (
    PREEMPTED_EXIT_STATUS,
    STOP_FILE,
    Preempted,
    handled_by_watcher,
    request_stop,
    stop_on_signals,
    stop_reason,
)


def eventually(condition, timeout=10.0) -> bool:
    """The watching thread reacts at once, but in its own time: poll briefly."""
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.01)
    return condition()


def test_the_first_signal_requests_the_stop_and_later_ones_are_ignored(tmp_path, capfd):
    before = signal.getsignal(signal.SIGTERM)
    request_stop(tmp_path, "SIGTERM")  # a stale request of an earlier run: cleared on entry
    with stop_on_signals(tmp_path) as handler:
        assert stop_reason(tmp_path) is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert eventually(lambda: stop_reason(tmp_path) == "SIGUSR1")
        os.kill(os.getpid(), signal.SIGTERM)  # the default action would end this process
        assert eventually(lambda: len(handler.received) == 2)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert eventually(lambda: len(handler.received) == 3)
        assert stop_reason(tmp_path) == "SIGUSR1" and handler.received == ["SIGUSR1", "SIGTERM", "SIGUSR1"]
    assert signal.getsignal(signal.SIGTERM) is before and not (tmp_path / STOP_FILE).exists()
    lines = capfd.readouterr().err.splitlines()
    assert lines[0] == ("refine: SIGUSR1 received: finishing the current step, then a checkpoint, then exit status "
                        f"{PREEMPTED_EXIT_STATUS}")
    assert lines[1:] == [f"refine: {name} received again: ignored, the stop after the current step is under way"
                         for name in ("SIGTERM", "SIGUSR1")]


def test_the_driver_ignores_both_signals_once_the_run_is_over(tmp_path):
    """ignore_after (the entry point): a signal while Ray shuts down must not end the process before its status."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        with stop_on_signals(tmp_path, ignore_after=True):
            pass
        assert signal.getsignal(signal.SIGUSR1) == signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: this process goes on
        assert stop_reason(tmp_path) is None
    finally:
        for sig, action in before.items():
            signal.signal(sig, action)


def test_the_handler_is_put_back_after_ray_init_replaces_it(tmp_path, monkeypatch):
    """ray.init installs a SIGTERM handler that exits at once (ray/_private/worker.py); a stand-in does the same."""
    import ray

    def ray_like_init(*args, **kwargs):
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(1))
        return "context"

    monkeypatch.setattr(ray, "init", ray_like_init)
    with stop_on_signals(tmp_path) as handler:
        assert ray.init(address="local") == "context"
        assert signal.getsignal(signal.SIGTERM) is handled_by_watcher and signal.set_wakeup_fd(-1) == handler._write
        handler.install()  # (the look above unset the wakeup pipe)
        os.kill(os.getpid(), signal.SIGTERM)
        assert eventually(lambda: stop_reason(tmp_path) == "SIGTERM")
    assert ray.init is ray_like_init  # the wrapper is gone afterwards


class Tracker:
    def __init__(self):
        self.steps = []

    def log(self, data, step):
        self.steps.append(step)


def loop_trainer(run_dir: Path, *, total: int, save_freq: int, on_step=None):
    """A RefineTrainer whose batches, step and verl save are stand-ins (no Ray): each step "trains" (one optimiser
    step, nothing skipped) and calls on_step(step); verl's save writes a shard whose bytes are the step number."""
    from refine.driver.ray_trainer import RefineTrainer

    trainer = object.__new__(RefineTrainer)
    trainer.config = OmegaConf.create({"trainer": {
        "default_local_dir": str(run_dir), "total_epochs": 1, "test_freq": -1, "save_freq": save_freq,
        "max_actor_ckpt_to_keep": None}})
    trainer.rc = SimpleNamespace(seed=1, max_consecutive_skips=3, reward="cosine")
    trainer.nsp_rng = torch.Generator().manual_seed(0)
    trainer.tokenizer = [0] * 16
    trainer.total_training_steps = total
    trainer.train_dataloader = [{"input_ids": torch.zeros(2, 3, dtype=torch.long)} for _ in range(total)]
    trainer.history = []
    trainer.global_steps = 0

    def train_step(batch):
        if on_step:
            on_step(trainer.global_steps)
        return {"actor/optimizer_steps": 1.0, "actor/skipped_optimizer_steps": 0.0, "actor/pg_loss": 0.5}

    trainer.train_step = train_step
    return trainer


def fake_verl_save(signal_midway=None):
    def save(self):
        run_dir = Path(self.config.trainer.default_local_dir)
        folder = run_dir / f"global_step_{self.global_steps}"
        (folder / "actor").mkdir(parents=True, exist_ok=True)
        with open(folder / "actor" / "model_world_size_1_rank_0.pt", "wb") as shard:
            shard.write(bytes([self.global_steps]) * 4096)
            if signal_midway is not None:  # a second signal while the shard is half written
                os.kill(os.getpid(), signal_midway)
            shard.write(bytes([self.global_steps]) * 4096)
        torch.save({"position": self.global_steps}, folder / "data.pt")
        (run_dir / POINTER_FILE).write_text(str(self.global_steps))
    return save


def test_a_stop_during_a_step_finishes_it_saves_it_and_stops(tmp_path, monkeypatch):
    """Stop requested during step 2 of 5 (save_freq=4: step 2 is no save point): step 2 is logged and saved, its
    files match their record, step 3 never starts, and the message names the signal, the folder and the status."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    monkeypatch.setattr(RayPPOTrainer, "_save_checkpoint", fake_verl_save())
    started = []

    def on_step(step):
        started.append(step)
        if step == 2:
            request_stop(tmp_path, "SIGUSR1")

    trainer, tracker = loop_trainer(tmp_path, total=5, save_freq=4, on_step=on_step), Tracker()
    with pytest.raises(Preempted) as err:
        trainer._train(tracker)
    assert started == [1, 2] and tracker.steps == [1, 2]
    assert damage(tmp_path / "global_step_2") is None and repair_latest(tmp_path) == 2
    assert (tmp_path / "global_step_2" / "actor" / "model_world_size_1_rank_0.pt").read_bytes() == bytes([2]) * 8192
    assert str(err.value) == (
        f"stopped after step 2 on SIGUSR1 (preemption or time limit): the checkpoint {tmp_path / 'global_step_2'} is "
        "complete. To resume, run the same command again (trainer.resume_mode=auto, the same "
        "trainer.default_local_dir); exit status 75")
    assert Preempted.exit_status == PREEMPTED_EXIT_STATUS == 75


def test_a_second_signal_in_the_middle_of_the_save_does_not_cut_it_short(tmp_path, monkeypatch, capfd):
    """The driver's handler in this very process (the worst case: in a real run the save is in another process):
    SIGUSR1 during step 1, SIGTERM while the shard is half written. The shard is whole, the record matches."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    monkeypatch.setattr(RayPPOTrainer, "_save_checkpoint", fake_verl_save(signal_midway=signal.SIGTERM))
    with stop_on_signals(tmp_path) as handler:
        def signal_in_step_1(step):
            if step == 1:
                os.kill(os.getpid(), signal.SIGUSR1)
                assert eventually(lambda: stop_reason(tmp_path) == "SIGUSR1")

        trainer = loop_trainer(tmp_path, total=3, save_freq=-1, on_step=signal_in_step_1)
        with pytest.raises(Preempted, match="stopped after step 1 on SIGUSR1"):
            trainer._train(Tracker())
        assert eventually(lambda: handler.received == ["SIGUSR1", "SIGTERM"])
    assert damage(tmp_path / "global_step_1") is None
    assert (tmp_path / "global_step_1" / "actor" / "model_world_size_1_rank_0.pt").stat().st_size == 8192
    assert "SIGTERM received again: ignored" in capfd.readouterr().err


def test_a_stop_on_the_last_step_is_a_finished_run(tmp_path, monkeypatch):
    """Nothing to resume: the run ends normally (its last checkpoint as save_freq says), no Preempted."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    monkeypatch.setattr(RayPPOTrainer, "_save_checkpoint", fake_verl_save())
    trainer = loop_trainer(tmp_path, total=2, save_freq=5,
                           on_step=lambda step: request_stop(tmp_path, "SIGTERM") if step == 2 else None)
    trainer._train(Tracker())
    assert repair_latest(tmp_path) == 2


def test_the_entry_point_exits_75_after_a_signal_and_3_for_other_stops():
    """How the driver reads the stop when it comes back through Ray (the cause inside a task error)."""
    from refine.driver.checkpoints import CheckpointError
    from refine.main import run_stop_reason, stop_exit_status

    class TaskError(RuntimeError):  # Ray's wrapper keeps the worker-side exception in .cause
        def __init__(self, cause):
            super().__init__("task failed")
            self.cause = cause

    stopped = TaskError(Preempted("stopped after step 2 on SIGUSR1"))
    assert run_stop_reason(stopped) == "stopped after step 2 on SIGUSR1" and stop_exit_status(stopped) == 75
    missing = TaskError(CheckpointError("no checkpoint in /x can be loaded"))
    assert run_stop_reason(missing) == "no checkpoint in /x can be loaded" and stop_exit_status(missing) == 3
