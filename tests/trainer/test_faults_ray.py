"""Fault injection through Ray on CPU (tiny demo DeltaNet): a run whose updates are all non-finite stops with a
clear error and writes no checkpoint; a latest pointer left empty by a crash resumes from the newest complete
step and reproduces the uninterrupted run."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tests.trainer.test_e2e_ray import COMPARED_PREFIXES, step_records

pytestmark = pytest.mark.slow


def test_non_finite_updates_stop_the_run_without_a_checkpoint(make_trainer, params, tmp_path):
    """ppo_coef = nan set behind the up-front check (which refuses it): every optimiser step is skipped, the run
    stops after refine.max_consecutive_skips = 2 steps, the weights never changed and nothing was checkpointed."""
    from refine.trainer.health import TrainingStopped

    trainer = make_trainer(["trainer.total_training_steps=6", "trainer.save_freq=1", "refine.max_consecutive_skips=2",
                            f"trainer.default_local_dir={tmp_path}"])
    trainer.rc = dataclasses.replace(trainer.rc, ppo_coef=math.nan)
    before = params(trainer)
    with pytest.raises(TrainingStopped, match="training stopped at step 2: 2 consecutive step"):
        trainer.fit()
    records = step_records(trainer)
    assert sorted(records) == [1, 2]
    assert [records[s]["actor/skipped_steps"] for s in (1, 2)] == [1.0, 1.0]
    assert records[2]["actor/skipped_steps_total"] == 2.0
    assert not list(tmp_path.glob("global_step_*")) and not (tmp_path / "latest_checkpointed_iteration.txt").exists()
    assert (params(trainer) == before).all()


def test_an_empty_latest_pointer_resumes_from_the_newest_complete_step(make_trainer, close, tmp_path):
    """The crash window of a pointer truncated by the save: the resume falls back to step 1 (complete), then
    steps 2-3 equal the uninterrupted run's."""
    common = ["trainer.save_freq=1", "trainer.resume_mode=auto"]
    full = make_trainer(common + ["trainer.total_training_steps=3", f"trainer.default_local_dir={tmp_path / 'full'}"])
    full.fit()
    expected = step_records(full)
    close(full)
    cut = tmp_path / "cut"
    first = make_trainer(common + ["trainer.total_training_steps=2", f"trainer.default_local_dir={cut}"])
    first.fit()
    close(first)
    (cut / "latest_checkpointed_iteration.txt").write_text("")  # the crash: pointer truncated, never rewritten
    (cut / "global_step_2" / "data.pt").unlink()  # and step 2 incomplete
    resumed = make_trainer(common + ["trainer.total_training_steps=3", f"trainer.default_local_dir={cut}"])
    resumed.fit()
    got = step_records(resumed)
    assert (cut / "latest_checkpointed_iteration.txt").read_text() == "3"
    for step in (2, 3):
        for key, value in expected[step].items():
            if key.startswith(COMPARED_PREFIXES) and "memory" not in key:
                assert got[step][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)


def test_post_training_killed_after_step_1_resumes_like_the_uninterrupted_run(make_trainer, close, ruler_files,
                                                                               tmp_path):
    """Post-training (inner NSP + task SFT): a run stopped after step 1 (fresh workers, as after a kill) and
    resumed reproduces steps 2-3 of the uninterrupted run, task-SFT metrics included."""
    from tests.trainer.test_post_ttt_ray import ruler_overrides

    def post(run_dir, steps):
        return make_trainer(ruler_overrides(ruler_files, run_dir) + [
            "refine.task_sft_update=true", "refine.val_get_loss=false", f"trainer.total_training_steps={steps}",
            "trainer.test_freq=-1", "trainer.save_freq=1", "trainer.resume_mode=auto",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"])

    full = post(tmp_path / "full", 2)
    full.fit()
    expected = step_records(full)
    close(full)
    first = post(tmp_path / "cut", 1)
    first.fit()
    close(first)
    resumed = post(tmp_path / "cut", 2)
    resumed.fit()
    got = step_records(resumed)
    assert "actor/sft_loss" in got[2] and sorted(got) == [1, 2]
    for step in (2,):
        for key, value in expected[step].items():
            if key.startswith(COMPARED_PREFIXES) and "memory" not in key:
                assert got[step][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)
