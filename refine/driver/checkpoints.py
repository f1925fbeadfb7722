"""Checkpoints that are complete before they are marked latest, and resumes that never load a partial one.

verl's `_save_checkpoint` writes the actor shards, then `data.pt` (the dataloader position), then truncates and
rewrites `latest_checkpointed_iteration.txt`. ReFINE adds `refine_state.pt` (the position-selection RNG) *before*
that, so a step folder is complete when the pointer moves, and rewrites the pointer atomically afterwards (write a
temporary file, then rename). On resume (`trainer.resume_mode=auto`) a pointer that is empty, unreadable or names
an incomplete folder falls back to the newest complete step folder, with a message.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import torch

from refine.files import atomic_write_bytes

POINTER_FILE = "latest_checkpointed_iteration.txt"
REFINE_STATE_FILE = "refine_state.pt"
_STEP_DIR = re.compile(r"^global_step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (the message names the folder, the cause and the free space)."""


def save_refine_state(folder: Path, state: dict) -> None:
    """`refine_state.pt` in the step folder, atomically (written before verl moves the latest pointer)."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(folder / REFINE_STATE_FILE, buffer.getvalue())


def set_latest(run_dir: Path, step: int) -> None:
    atomic_write_bytes(run_dir / POINTER_FILE, str(step).encode())


def is_complete(folder: Path) -> bool:
    """Everything a resume loads is there: the actor shards, the dataloader state and the ReFINE state."""
    actor = folder / "actor"
    data = folder / "data.pt"
    return (actor.is_dir() and any(actor.iterdir()) and data.is_file() and data.stat().st_size > 0
            and (folder / REFINE_STATE_FILE).is_file())


def complete_steps(run_dir: Path) -> list[int]:
    """Steps with a complete folder in `run_dir`, newest first."""
    if not run_dir.is_dir():
        return []
    steps = [int(m.group(1)) for p in run_dir.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted((s for s in steps if is_complete(run_dir / f"global_step_{s}")), reverse=True)


def repair_latest(run_dir: Path) -> int | None:
    """Make the latest pointer name a complete step folder before verl resumes from it.

    Returns the step it names (None when there is no pointer: a fresh run). A bad pointer falls back to the newest
    complete folder with a message; with no complete folder at all, CheckpointError says what to do.
    """
    pointer = run_dir / POINTER_FILE
    if not pointer.exists():
        return None
    text = pointer.read_text().strip()
    if text.isdigit() and is_complete(run_dir / f"global_step_{int(text)}"):
        return int(text)
    candidates = complete_steps(run_dir)
    problem = (f"{pointer} is empty or unreadable ({text!r})" if not text.isdigit()
               else f"{run_dir / f'global_step_{int(text)}'} is incomplete")
    if not candidates:
        raise CheckpointError(f"{problem} and {run_dir} holds no complete checkpoint. Fix: remove the folder or "
                              "start without resuming (trainer.resume_mode=disable)")
    print(f"WARNING: {problem}; resuming from the newest complete checkpoint, step {candidates[0]}", flush=True)
    set_latest(run_dir, candidates[0])
    return candidates[0]


def describe_save_failure(exc: BaseException, folder: Path) -> str:
    """One line: what failed, where, the cause and the free space of that file system."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{shutil.disk_usage(probe).free / 2**30:.2f} GiB free"
    except OSError:
        free = "free space unknown"
    cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return (f"saving the checkpoint {folder} failed ({free} on that file system): {cause}. The previous complete "
            "checkpoint stays the latest; free space or fix the permissions and resume with trainer.resume_mode=auto")
