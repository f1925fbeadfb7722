"""Checkpoints verified on load and kept by count, on step folders written by hand (no Ray): a truncated and a
bit-flipped shard in the newest step make the resume load the step before, with one line naming the file; with no
good step left, one line and nothing loaded; `trainer.max_actor_ckpt_to_keep` never removes the last good step."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from refine.driver.checkpoints import (
    COMPLETION_RECORD,
    POINTER_FILE,
    CheckpointError,
    damage,
    repair_latest,
    verify_for_load,
)
from refine.driver.retention import checkpoints_to_keep, remove_old_steps
from tests.trainer.test_checkpoints import fake_trainer, make_step

SHARD = "actor/model_world_size_1_rank_0.pt"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit different: only the checksum can tell
    path.write_bytes(bytes(data))


def test_the_record_holds_each_files_size_and_sha256(tmp_path):
    """Against hashlib and os.stat, computed here: every saved file, nothing else (not the record itself)."""
    folder = make_step(tmp_path, 3)
    record = json.loads((folder / COMPLETION_RECORD).read_text())
    expected = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size,
                                                   "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                for p in folder.rglob("*") if p.is_file() and p.name != COMPLETION_RECORD}
    assert record == {"step": 3, "files": expected}
    assert sorted(expected) == ["actor/model_world_size_1_rank_0.pt", "data.pt", "refine_state.pt"]


@pytest.mark.parametrize("spoil,what", [(truncate, r"has \d+ bytes, \d+ recorded at save"),
                                        (flip_a_bit, "does not match the SHA-256 recorded at save")])
def test_a_damaged_shard_in_the_newest_step_resumes_the_step_before_with_one_line(tmp_path, capsys, spoil, what):
    make_step(tmp_path, 2)
    make_step(tmp_path, 4)
    (tmp_path / POINTER_FILE).write_text("4")
    spoil(tmp_path / "global_step_4" / SHARD)
    assert repair_latest(tmp_path) == 2
    assert (tmp_path / POINTER_FILE).read_text() == "2"
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"WARNING: checkpoint skipped: {tmp_path / 'global_step_4' / SHARD} ")
    assert re.search(what, line) and "resuming from step 2" in line


def test_sizes_alone_miss_a_flipped_bit_the_checksum_does_not(tmp_path):
    folder = make_step(tmp_path, 1)
    flip_a_bit(folder / "data.pt")
    assert damage(folder, checksums=False) is None
    assert "data.pt does not match the SHA-256" in damage(folder)


def test_no_good_step_left_is_one_line_and_nothing_is_loaded(tmp_path, monkeypatch):
    """Both steps damaged: the resume stops with one line naming each file; verl's load never runs and the pointer
    is left as it was."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    make_step(tmp_path, 2)
    make_step(tmp_path, 4)
    (tmp_path / POINTER_FILE).write_text("4")
    flip_a_bit(tmp_path / "global_step_4" / SHARD)
    truncate(tmp_path / "global_step_2" / "refine_state.pt")
    loads = []
    monkeypatch.setattr(RayPPOTrainer, "_load_checkpoint", lambda self: loads.append(1))
    trainer = fake_trainer(tmp_path, 0)
    trainer.config.trainer.resume_mode = "auto"
    with pytest.raises(CheckpointError) as err:
        trainer._load_checkpoint()
    message = str(err.value)
    assert "\n" not in message and loads == [] and (tmp_path / POINTER_FILE).read_text() == "4"
    assert str(tmp_path / "global_step_4" / SHARD) in message and str(tmp_path / "global_step_2/refine_state.pt") \
        in message and "Nothing was loaded" in message


def test_an_explicit_resume_path_is_verified_too(tmp_path):
    folder = make_step(tmp_path, 5)
    verify_for_load(folder)
    truncate(folder / SHARD)
    with pytest.raises(CheckpointError, match=r"trainer.resume_from_path=.*global_step_5 cannot be loaded: .*rank_0"):
        verify_for_load(folder)


def test_a_resave_of_a_step_is_incomplete_until_it_finishes(tmp_path, monkeypatch):
    """Step 4 is saved again (after a fall-back resume): its old record goes first, so a save that fails half way
    leaves a folder that never counts, and the pointer stays on step 2."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    make_step(tmp_path, 2)
    make_step(tmp_path, 4)
    (tmp_path / POINTER_FILE).write_text("2")

    def half_save(self):
        (tmp_path / "global_step_4" / SHARD).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(RayPPOTrainer, "_save_checkpoint", half_save)
    with pytest.raises(CheckpointError):
        fake_trainer(tmp_path, 4)._save_checkpoint()
    assert not (tmp_path / "global_step_4" / COMPLETION_RECORD).exists()
    assert repair_latest(tmp_path) == 2


def keep_config(**keys):
    return OmegaConf.create({"max_actor_ckpt_to_keep": None, **keys})


def test_the_retention_keys_are_verls():
    assert checkpoints_to_keep(keep_config()) is None
    assert checkpoints_to_keep(keep_config(max_actor_ckpt_to_keep=0)) is None
    assert checkpoints_to_keep(keep_config(max_actor_ckpt_to_keep=2)) == 2
    assert checkpoints_to_keep(keep_config(max_actor_ckpt_to_keep=5, remove_previous_ckpt_in_save=True)) == 1


def test_retention_keeps_the_newest_good_steps_and_never_the_last_good_one(tmp_path):
    """Steps 1-3 complete, step 4 damaged (not counted), step 5 just saved: keep=2 keeps 3 and 5 (4 is newer than
    the oldest kept and stays until overwritten), removes 1 and 2 whole; keep=1 after step 5 removes 3 and 4."""
    for step in (1, 2, 3, 4, 5):
        make_step(tmp_path, step)
    truncate(tmp_path / "global_step_4" / SHARD)
    assert remove_old_steps(tmp_path, 2, latest=5) == [2, 1]
    assert sorted(p.name for p in tmp_path.glob("global_step_*")) == ["global_step_3", "global_step_4",
                                                                      "global_step_5"]
    assert remove_old_steps(tmp_path, 1, latest=5) == [4, 3]
    assert remove_old_steps(tmp_path, None, latest=5) == []
    assert repair_latest(tmp_path) is None and [p.name for p in tmp_path.glob("global_step_*")] == ["global_step_5"]


def test_retention_never_removes_the_step_just_saved_even_behind_a_newer_stale_one(tmp_path):
    """A stale complete step 6 (from before a fall-back resume) and the step just saved, 4: keep=1 keeps both."""
    for step in (2, 4, 6):
        make_step(tmp_path, step)
    assert remove_old_steps(tmp_path, 1, latest=4) == [2]
    assert (tmp_path / "global_step_4" / COMPLETION_RECORD).exists()


def test_a_save_applies_the_retention_after_the_pointer_moves(tmp_path, monkeypatch):
    """Through RefineTrainer._save_checkpoint with verl's save replaced: verl sees its retention key unset (ReFINE
    applies it), and after saving step 3 with max_actor_ckpt_to_keep=2 steps 2 and 3 are left, 3 the latest."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    seen = []

    def verl_save(self):
        seen.append(self.config.trainer.max_actor_ckpt_to_keep)
        run_dir = Path(self.config.trainer.default_local_dir)
        make_step(run_dir, self.global_steps, state=False)

    monkeypatch.setattr(RayPPOTrainer, "_save_checkpoint", verl_save)
    for step in (1, 2, 3):
        trainer = fake_trainer(tmp_path, step)
        trainer.config.trainer.max_actor_ckpt_to_keep = 2
        trainer._save_checkpoint()
        assert trainer.config.trainer.max_actor_ckpt_to_keep == 2  # restored after verl's save
    assert seen == [None, None, None]
    assert sorted(p.name for p in tmp_path.glob("global_step_*")) == ["global_step_2", "global_step_3"]
    assert repair_latest(tmp_path) == 3 and torch.load(tmp_path / "global_step_3" / "refine_state.pt",
                                                       weights_only=True)["seed"] == 1
