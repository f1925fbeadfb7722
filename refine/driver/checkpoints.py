"""Checkpoints that are complete before they are marked latest, verified when loaded, never loaded partial.

verl's `_save_checkpoint` writes the actor shards, then `data.pt` (the dataloader position), then truncates and
rewrites `latest_checkpointed_iteration.txt`. ReFINE wraps it: first it removes the folder's old completion record
(a re-save of the same step is incomplete until it finishes) and writes `refine_state.pt` (the position-selection
RNG); after verl it writes the step's completion record `refine_complete.json` (every file's size and SHA-256) and
then rewrites the pointer atomically (write a temporary file, then rename). A step folder counts only with a record
whose files all match: a save cut short has none, and a file truncated or changed later no longer matches it.

On resume (`trainer.resume_mode=auto`) the step the pointer names is verified (sizes and checksums); a pointer that
is empty, unreadable or names a folder that does not match falls back to the newest step that does, with one line
per skipped step naming the file; with none left, one line and no load (`CheckpointError`).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import torch

from refine.files import atomic_write_bytes

POINTER_FILE = "latest_checkpointed_iteration.txt"
REFINE_STATE_FILE = "refine_state.pt"
COMPLETION_RECORD = "refine_complete.json"
_STEP_DIR = re.compile(r"^global_step_(\d+)$")
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or none can be loaded (the message says where and what to do)."""


def save_refine_state(folder: Path, state: dict) -> None:
    """`refine_state.pt` in the step folder, atomically (written before verl moves the latest pointer)."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(folder / REFINE_STATE_FILE, buffer.getvalue())


def begin_save(folder: Path) -> None:
    """Before a save into `folder`: drop its old completion record, so a half-done re-save never counts."""
    (folder / COMPLETION_RECORD).unlink(missing_ok=True)


def set_latest(run_dir: Path, step: int) -> None:
    atomic_write_bytes(run_dir / POINTER_FILE, str(step).encode())


def step_folder(run_dir: Path, step: int) -> Path:
    return run_dir / f"global_step_{step}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _saved_files(folder: Path) -> list[Path]:
    """The files of a step folder a record covers: all of them, but the record and leftover temporary files."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETION_RECORD
                  and not (p.name.startswith(".") and p.name.endswith(".tmp")))


def record_completion(folder: Path, step: int) -> None:
    """Write the step's completion record: each saved file's size and SHA-256 (after verl's save, before the
    pointer moves)."""
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_of(p)}
             for p in _saved_files(folder)}
    atomic_write_bytes(folder / COMPLETION_RECORD, json.dumps({"step": step, "files": files}, indent=1).encode())


def damage(folder: Path, *, checksums: bool = True) -> str | None:
    """None when `folder` is a complete step whose files match its completion record; else what is wrong, naming
    the file. `checksums=False` compares sizes only (cheap: for listings, not for loading)."""
    actor = folder / "actor"
    for needed, present in (("actor/", actor.is_dir() and any(actor.iterdir())), ("data.pt", (folder / "data.pt")
                            .is_file()), (REFINE_STATE_FILE, (folder / REFINE_STATE_FILE).is_file())):
        if not present:
            return f"{folder / needed} is missing (the save did not finish)"
    try:
        record = json.loads((folder / COMPLETION_RECORD).read_text())
        files = record["files"]
    except FileNotFoundError:
        return f"{folder / COMPLETION_RECORD} is missing (the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{folder / COMPLETION_RECORD} is unreadable ({type(exc).__name__})"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing (recorded at save)"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{path} has {size} bytes, {expected['size']} recorded at save (truncated or overwritten)"
        if checksums and sha256_of(path) != expected["sha256"]:
            return f"{path} does not match the SHA-256 recorded at save (its content changed)"
    return None


def is_complete(folder: Path) -> bool:
    """Complete with every recorded file of the recorded size (no checksums: a cheap listing check)."""
    return damage(folder, checksums=False) is None


def step_numbers(run_dir: Path) -> list[int]:
    """Every `global_step_N` folder of `run_dir`, newest first."""
    if not run_dir.is_dir():
        return []
    return sorted((int(m.group(1)) for p in run_dir.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()),
                  reverse=True)


def complete_steps(run_dir: Path) -> list[int]:
    """Steps with a complete folder in `run_dir` (sizes checked), newest first."""
    return [s for s in step_numbers(run_dir) if is_complete(step_folder(run_dir, s))]


def repair_latest(run_dir: Path) -> int | None:
    """Make the latest pointer name a verified step folder before verl resumes from it.

    Returns the step it names (None when there is no pointer: a fresh run). The pointer's step is verified (sizes
    and checksums); if it does not match, each newer-to-older step is tried, each skipped one printed on one line
    naming the file, and the pointer is rewritten to the first that matches. With none, CheckpointError (one line)
    and nothing is loaded.
    """
    pointer = run_dir / POINTER_FILE
    if not pointer.exists():
        return None
    text = pointer.read_text().strip()
    named = int(text) if text.isdigit() else None
    problems = []
    if named is None:
        problems.append(f"{pointer} is empty or unreadable ({text!r})")
    elif not step_folder(run_dir, named).is_dir():
        problems.append(f"{pointer} names {step_folder(run_dir, named)}, which does not exist")
        named = None
    # the pointer's step first, then every other step, newest first
    for step in ([named] if named is not None else []) + [s for s in step_numbers(run_dir) if s != named]:
        problem = damage(step_folder(run_dir, step))
        if problem is None:
            for line in problems:
                print(f"WARNING: checkpoint skipped: {line}; resuming from step {step}, the newest checkpoint "
                      "whose files match their completion record", flush=True)
            if problems:
                set_latest(run_dir, step)
            return step
        problems.append(problem)
    raise CheckpointError(f"no checkpoint in {run_dir} can be loaded: {'; '.join(problems)}. Nothing was loaded. "
                          "Fix: restore the files, load one explicitly (trainer.resume_mode=resume_path "
                          "trainer.resume_from_path=...), or start over (trainer.resume_mode=disable)")


def verify_for_load(folder: Path) -> None:
    """CheckpointError (one line) unless `folder` matches its completion record (`trainer.resume_from_path`)."""
    problem = damage(folder)
    if problem is not None:
        raise CheckpointError(f"trainer.resume_from_path={folder} cannot be loaded: {problem}. Nothing was loaded. "
                              "Fix: choose another global_step_N folder or restore the files")


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
