"""Checkpoints complete before they are latest; a bad latest pointer falls back to the newest complete folder;
a failed save names the folder, the cause and the free space and leaves the previous checkpoint latest.
The crash windows are simulated on a RefineTrainer whose verl save is replaced (no Ray)."""

from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from refine.driver.checkpoints import (
    POINTER_FILE,
    REFINE_STATE_FILE,
    CheckpointError,
    complete_steps,
    record_completion,
    repair_latest,
)


def make_step(run_dir: Path, step: int, *, actor=True, data=True, state=True, record=None) -> Path:
    """A step folder as a save leaves it; the completion record only when the save finished (all files there)."""
    folder = run_dir / f"global_step_{step}"
    (folder / "actor").mkdir(parents=True)
    if actor:
        (folder / "actor" / "model_world_size_1_rank_0.pt").write_bytes(b"weights of step %d" % step)
    if data:
        torch.save({"position": step}, folder / "data.pt")
    if state:
        torch.save({"nsp_rng": torch.zeros(3)}, folder / REFINE_STATE_FILE)
    if record if record is not None else (actor and data and state):
        record_completion(folder, step)
    return folder


def test_a_good_pointer_is_kept(tmp_path):
    make_step(tmp_path, 2)
    (tmp_path / POINTER_FILE).write_text("2")
    assert repair_latest(tmp_path) == 2
    assert repair_latest(tmp_path / "fresh") is None  # no pointer: a fresh run


@pytest.mark.parametrize("pointer,broken", [("", None), ("garbage", None), ("4", "state"), ("4", "data"),
                                            ("4", "actor"), ("4", "record"), ("9", None)])
def test_a_bad_pointer_falls_back_to_the_newest_complete_folder(tmp_path, capsys, pointer, broken):
    make_step(tmp_path, 2)
    make_step(tmp_path, 4, **({broken: False} if broken else {}))  # record=False: the save stopped before it
    (tmp_path / POINTER_FILE).write_text(pointer)
    expected = 2 if broken else 4  # the newest folder that is complete
    assert repair_latest(tmp_path) == expected
    assert (tmp_path / POINTER_FILE).read_text() == str(expected)
    assert "resuming from step %d, the newest checkpoint whose files match" % expected in capsys.readouterr().out
    assert complete_steps(tmp_path) == ([4, 2] if not broken else [2])


def test_no_complete_folder_is_one_clear_error(tmp_path):
    make_step(tmp_path, 3, state=False)
    (tmp_path / POINTER_FILE).write_text("3")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be loaded: .*global_step_3/refine_state.pt is "
                       r"missing .*Nothing was loaded"):
        repair_latest(tmp_path)


def fake_trainer(tmp_path, step):
    from refine.driver.ray_trainer import RefineTrainer

    trainer = object.__new__(RefineTrainer)
    trainer.config = OmegaConf.create({"trainer": {"default_local_dir": str(tmp_path), "max_actor_ckpt_to_keep": None}})
    trainer.nsp_rng = torch.Generator().manual_seed(0)
    trainer.rc = SimpleNamespace(seed=1)
    trainer.global_steps = step
    return trainer


@pytest.mark.parametrize("stage", ["before_actor", "after_actor", "after_data"])
def test_a_save_interrupted_at_any_stage_leaves_the_previous_checkpoint_latest(tmp_path, monkeypatch, stage):
    """verl's save (actor shards, data.pt, pointer) raises at `stage` (disk full): the error names the folder, the
    cause and the free space; step 2 stays the latest and complete; no half-written ReFINE file is left."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    make_step(tmp_path, 2)
    (tmp_path / POINTER_FILE).write_text("2")

    def failing_save(self):
        folder = Path(self.config.trainer.default_local_dir) / f"global_step_{self.global_steps}"
        if stage != "before_actor":
            (folder / "actor").mkdir(parents=True, exist_ok=True)
            (folder / "actor" / "model.pt").write_bytes(b"part")
        if stage == "after_data":
            torch.save({}, folder / "data.pt")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RayPPOTrainer, "_save_checkpoint", failing_save)
    with pytest.raises(CheckpointError, match=r"global_step_4 failed \(.* GiB free on that file system\): .*No space"):
        fake_trainer(tmp_path, 4)._save_checkpoint()
    assert (tmp_path / POINTER_FILE).read_text() == "2"
    assert repair_latest(tmp_path) == 2
    assert not list(tmp_path.rglob(".*.tmp"))


def test_the_refine_state_is_written_before_the_pointer_moves(tmp_path, monkeypatch):
    """When verl moves the pointer, refine_state.pt of that step is already there (the old order lost it)."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    seen = {}

    def verl_save(self):
        folder = Path(self.config.trainer.default_local_dir) / f"global_step_{self.global_steps}"
        seen["state_before_pointer"] = (folder / REFINE_STATE_FILE).is_file()
        make_step(Path(self.config.trainer.default_local_dir), self.global_steps, state=False)
        (Path(self.config.trainer.default_local_dir) / POINTER_FILE).write_text(str(self.global_steps))

    monkeypatch.setattr(RayPPOTrainer, "_save_checkpoint", verl_save)
    fake_trainer(tmp_path, 6)._save_checkpoint()
    assert seen["state_before_pointer"]
    assert repair_latest(tmp_path) == 6 and complete_steps(tmp_path) == [6]
