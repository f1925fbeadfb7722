"""Fault injection through Ray on CPU (tiny demo DeltaNet): a run whose updates are all non-finite stops with a
clear error and writes no checkpoint; a latest pointer left empty by a crash resumes from the newest complete
step and reproduces the uninterrupted run."""

from __future__ import annotations

import copy
import math

import pytest

from tests.trainer.test_e2e_ray import COMPARED_PREFIXES, step_records

pytestmark = pytest.mark.slow


def test_non_finite_updates_stop_the_run_without_a_checkpoint(make_trainer, params, tmp_path):
    """ppo_coef = nan set behind the up-front check (which refuses it): every optimiser step is skipped, the run
    stops after refine.max_consecutive_skips = 2 steps, the weights never changed and nothing was checkpointed."""
    from refine.driver.health import TrainingStopped

    trainer = make_trainer(["trainer.total_training_steps=6", "trainer.save_freq=1", "refine.max_consecutive_skips=2",
                            f"trainer.default_local_dir={tmp_path}"])
    trainer.rc = copy.copy(trainer.rc)  # the config checks itself on construction: bypass it on a copy
    object.__setattr__(trainer.rc, "ppo_coef", math.nan)
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


def test_test_time_training_stopped_mid_file_by_a_signal_then_rerun_like_the_uninterrupted_run(
        make_trainer, close, ruler_files, tmp_path):
    """TTT writes no checkpoint (val_only): a stop request (what the driver's SIGUSR1/SIGTERM handler writes) during
    the first of two batches ends the run after that batch with `Preempted` (exit 75 at the entry point) and the
    predictions so far, which are the uninterrupted run's first rows; running the same command again in the same
    run folder gives the uninterrupted metrics and predictions (nothing left behind changes them)."""
    import json

    from refine.driver.preemption import STOP_FILE, Preempted, request_stop
    from tests.trainer.test_post_ttt_ray import ruler_overrides

    def ttt(run_dir):
        return make_trainer(ruler_overrides(ruler_files, run_dir) + [
            "trainer.val_only=true", "trainer.val_before_train=true", "data.train_files=null",
            "refine.ttt_sft_update=false", "refine.ttt_ppo_update=false", "refine.val_get_loss=false",
            "refine.val_ttt_sft_update=true", "refine.val_ttt_ppo_update=true", "refine.mini_batch_size=2",
            "data.val_batch_size=2"])

    rows = lambda run: [json.loads(line)["prediction"] for line in  # noqa: E731
                        (tmp_path / run / "predictions" / "step_0.jsonl").read_text().splitlines()]
    full = ttt(tmp_path / "full")
    full.fit()
    expected = full.history[0]
    close(full)

    stopped = ttt(tmp_path / "cut")
    answer = stopped.actor_rollout_wg.generate_greedy

    def signal_during_first_batch(data):
        request_stop(tmp_path / "cut", "SIGUSR1")
        return answer(data)

    stopped.actor_rollout_wg.generate_greedy = signal_during_first_batch
    with pytest.raises(Preempted, match=r"test-time training stopped on SIGUSR1 .* after 1 of 2 validation batches"):
        stopped.fit()
    close(stopped)
    assert rows("cut") == rows("full")[:2]
    (tmp_path / "cut" / STOP_FILE).unlink()  # the driver clears it when it exits
    rerun = ttt(tmp_path / "cut")
    rerun.fit()
    got = rerun.history[0]
    for key, value in expected.items():
        if key.startswith("val_"):
            assert got[key] == pytest.approx(value, rel=1e-6), key
    assert rows("cut") == rows("full")


def test_a_killed_worker_leaves_the_latest_checkpoint_intact_and_says_how_to_resume(make_trainer, tmp_path):
    """A worker process is killed during step 3 (checkpoints every step): the run fails with Ray's dead-actor
    error, step 2 stays the latest complete checkpoint, and the entry point's one line names it and the resume."""
    from types import SimpleNamespace

    import ray

    from refine.main import dead_worker_message, worker_died
    from refine.driver.checkpoints import repair_latest

    trainer = make_trainer(["trainer.total_training_steps=4", "trainer.save_freq=1", "trainer.resume_mode=auto",
                            f"trainer.default_local_dir={tmp_path}"])
    inner = trainer.inner_loop

    def kill_at_step_3(batch, **kwargs):
        if trainer.global_steps == 3:
            ray.kill(trainer.actor_rollout_wg._workers[0])
        return inner(batch, **kwargs)

    trainer.inner_loop = kill_at_step_3
    with pytest.raises(Exception) as err:
        trainer.fit()
    assert worker_died(err.value), repr(err.value)
    assert repair_latest(tmp_path) == 2
    message = dead_worker_message(err.value, SimpleNamespace(trainer=SimpleNamespace(default_local_dir=str(tmp_path))))
    assert str(tmp_path / "global_step_2") in message and "trainer.resume_mode=auto" in message
