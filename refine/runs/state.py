"""A run folder's `run_state.json`: whether the run is running, finished, stopped or failed, since when, and how
many steps it logged.

The trainer writes "running" when it starts (with its process id and host), then "finished", "failed" (with the
error's first line) or "stopped" (interrupted). A run killed outright (SIGKILL, preemption, a lost node) never writes
its end: a "running" state whose process no longer exists on this host reads as "stopped".
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from refine.files import atomic_write_bytes

STATE_FILE = "run_state.json"
STATES = ("running", "finished", "stopped", "failed")


def read_state(run_dir: Path) -> dict | None:
    """The recorded state of `run_dir` (None when there is none or it cannot be read)."""
    try:
        state = json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("state") in STATES else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that id: alive
        return True
    return True


def current_state(state: dict | None) -> str | None:
    """The state as it is now: a "running" record whose process is gone from this host is "stopped"."""
    if state is None:
        return None
    if state["state"] == "running" and state.get("host") == socket.gethostname() and not _alive(int(state["pid"])):
        return "stopped"
    return state["state"]


def mark_running(run_dir: Path, step: int) -> dict:
    """Record that this process (re)starts the run at `step`; the wall time of earlier segments is kept."""
    before = read_state(run_dir) or {}
    state = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(), "step": step,
             "started": time.time(), "wall_s_before": float(before.get("wall_s", 0.0)), "error": None, "next": None}
    state["wall_s"] = state["wall_s_before"]
    _write(run_dir, state)
    return state


def mark_step(run_dir: Path, state: dict, step: int) -> None:
    state.update(step=step, wall_s=state["wall_s_before"] + time.time() - state["started"])
    _write(run_dir, state)


def mark_end(run_dir: Path, state: dict, outcome: str, error: str | None = None) -> None:
    """Record how the run ended: "finished", "stopped" or "failed" (with the error's first line)."""
    state.update(state=outcome, error=error, ended=time.time(),
                 wall_s=state["wall_s_before"] + time.time() - state["started"])
    _write(run_dir, state)


def _write(run_dir: Path, state: dict) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(run_dir) / STATE_FILE, json.dumps(state, indent=1).encode())


def record_next(run_dir: Path, state: dict, command: str) -> None:
    """The command that follows this run (the export of its newest checkpoint): printed last by the entry point."""
    state["next"] = command
    _write(run_dir, state)
