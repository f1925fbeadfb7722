"""Stopping on SIGUSR1 or SIGTERM (a preemption, a time limit): finish the global step, save, exit with a status
that says "resume me".

The signal reaches the process that started the run (`python -m refine.main`, the driver; the SLURM launchers
forward theirs to it). Training runs elsewhere: in Ray's task-runner actor, another process, maybe on another node.
So the driver's handler only writes the request into the run folder (`STOP_FILE`, shared by every node, as the
checkpoints are), and the training loop reads it after each global step: it writes a complete checkpoint of that
step (the same save as `trainer.save_freq`, completion record included) and raises `Preempted`; the driver prints
its one line and exits with `PREEMPTED_EXIT_STATUS`. Test-time training (nothing to save) stops between
validation batches with its predictions so far. Further signals are reported and ignored: the save in progress
runs in another process and is never interrupted by them. A run that finishes its last step exits 0 as usual.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

# sysexits.h EX_TEMPFAIL, "temporary failure, try again": the run stopped early and resumes where it stopped
PREEMPTED_EXIT_STATUS = 75
STOP_FILE = "stop_requested"
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class Preempted(RuntimeError):
    """The run stopped on a signal after a complete checkpoint (the message says which, where and how to resume)."""

    exit_status = PREEMPTED_EXIT_STATUS


def request_stop(run_dir: Path, reason: str) -> None:
    """Ask the training loop of the run in `run_dir` to stop after its current step."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{STOP_FILE}.tmp"
    tmp.write_text(reason)
    os.replace(tmp, run_dir / STOP_FILE)


def stop_reason(run_dir: Path) -> str | None:
    """Why a stop was requested (the signal's name), or None."""
    try:
        return (run_dir / STOP_FILE).read_text().strip() or "a stop request"
    except FileNotFoundError:
        return None


def clear_stop_request(run_dir: Path) -> None:
    (run_dir / STOP_FILE).unlink(missing_ok=True)


def preempted_message(reason: str, step: int, checkpoint: Path | None) -> str:
    saved = (f"the checkpoint {checkpoint} is complete" if checkpoint is not None
             else "no checkpoint was written (the step did not train; the latest complete one stays the latest)")
    return (f"stopped after step {step} on {reason} (preemption or time limit): {saved}. To resume, run the same "
            f"command again (trainer.resume_mode=auto, the same trainer.default_local_dir); exit status "
            f"{PREEMPTED_EXIT_STATUS}")


class SignalStop:
    """The driver's reaction to a signal: the first writes the stop request, any later one is reported and ignored.

    It runs in a thread of its own, woken through `signal.set_wakeup_fd` (the C-level handler writes the signal's
    number into a pipe at once). A Python-level handler would run only when the main thread next checks for
    signals, and inside Ray's wait that is not at once: on fast steps the stop would land steps later. The
    Python-level handler installed is a no-op: it only keeps the default action (ending the process) away.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.received: list[str] = []
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)  # set_wakeup_fd needs it
        threading.Thread(target=self._watch, name="refine-stop-signals", daemon=True).start()

    def _watch(self) -> None:
        while data := os.read(self._read, 64):
            for signum in data:
                self.react(signum)

    def react(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if len(self.received) == 1:
            request_stop(self.run_dir, name)
            line = (f"refine: {name} received: finishing the current step, then a checkpoint, then exit status "
                    f"{PREEMPTED_EXIT_STATUS}\n")
        else:
            line = f"refine: {name} received again: ignored, the stop after the current step is under way\n"
        os.write(2, line.encode())

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, handled_by_watcher)
        previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        if not hasattr(self, "_previous_fd"):
            self._previous_fd = previous

    def close(self) -> None:
        signal.set_wakeup_fd(getattr(self, "_previous_fd", -1))
        os.close(self._write)  # the watching thread reads the end of the pipe and returns


def handled_by_watcher(signum, frame) -> None:
    """The Python-level handler: `SignalStop`'s thread has already seen the signal through the wakeup pipe."""


@contextmanager
def stop_on_signals(run_dir: Path, *, ignore_after: bool = False):
    """Inside: SIGUSR1 and SIGTERM request a stop after the current step (main thread only).

    `ray.init` installs its own SIGTERM handler (exit at once, no checkpoint); the handler is put back right after
    it, whoever calls it (verl's `run_ppo` does). A stale request of an earlier run is cleared first. Afterwards the
    previous handlers come back, or with `ignore_after` (a process about to exit: the driver) both signals are
    ignored, so that one arriving while Ray shuts down cannot end the process before Ray's clean-up and its status.
    """
    import ray  # the driver starts Ray inside: only a run that is about to start needs it

    clear_stop_request(run_dir)
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    handler = SignalStop(run_dir)
    handler.install()
    ray_init = ray.init

    def init_then_keep_handler(*args, **kwargs):
        result = ray_init(*args, **kwargs)
        handler.install()
        return result

    ray.init = init_then_keep_handler
    try:
        yield handler
    finally:
        ray.init = ray_init
        for sig, action in previous.items():
            signal.signal(sig, signal.SIG_IGN if ignore_after else action)
        handler.close()
        clear_stop_request(run_dir)
