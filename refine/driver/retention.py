"""How many checkpoints a run keeps: verl's `trainer.max_actor_ckpt_to_keep`, applied by the completion records.

verl applies the key inside each worker, counting only the saves of that worker process (not those of a run it
resumed), deleting only the `actor/` sub-folder of old steps, and (for a value >= 2) deleting before the new save
has succeeded. ReFINE turns verl's own deletion off during its save and applies the key on the driver instead,
after the new step's completion record and pointer are written: it keeps the newest N steps whose records match
(sizes) and removes whole step folders older than those, never the step the pointer names. Unset or <= 0 keeps
every checkpoint (verl's default). `trainer.remove_previous_ckpt_in_save=true` (deprecated in verl) means 1.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

from omegaconf import open_dict

from refine.driver.checkpoints import COMPLETION_RECORD, is_complete, step_folder, step_numbers

_VERL_KEYS = ("max_actor_ckpt_to_keep", "remove_previous_ckpt_in_save")


def checkpoints_to_keep(trainer_cfg) -> int | None:
    """The number of checkpoints to keep (None: all), from verl's keys."""
    if trainer_cfg.get("remove_previous_ckpt_in_save", False):
        return 1
    keep = trainer_cfg.get("max_actor_ckpt_to_keep", None)
    return int(keep) if keep is not None and int(keep) > 0 else None


@contextmanager
def verl_deletes_nothing(trainer_cfg):
    """verl's save with its retention keys unset (restored after): ReFINE's `remove_old_steps` applies them."""
    saved = {key: trainer_cfg.get(key, None) for key in _VERL_KEYS}
    with open_dict(trainer_cfg):
        trainer_cfg.max_actor_ckpt_to_keep = None
        trainer_cfg.remove_previous_ckpt_in_save = False
    try:
        yield
    finally:
        with open_dict(trainer_cfg):
            for key, value in saved.items():
                trainer_cfg[key] = value


def remove_old_steps(run_dir: Path, keep: int | None, *, latest: int) -> list[int]:
    """Remove the step folders older than the `keep` newest complete ones (never `latest`); the removed steps."""
    if keep is None:
        return []
    kept = [s for s in step_numbers(run_dir) if is_complete(step_folder(run_dir, s))][:keep]
    if latest not in kept:
        kept.append(latest)
    removed = [s for s in step_numbers(run_dir) if s < min(kept)]
    for step in removed:
        folder = step_folder(run_dir, step)
        # the record first: a folder whose removal is cut short never counts as a checkpoint
        (folder / COMPLETION_RECORD).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
    if removed:
        print(f"checkpoints kept: steps {sorted(kept)}; removed steps {sorted(removed)} "
              f"(trainer.max_actor_ckpt_to_keep={keep})", flush=True)
    return removed
