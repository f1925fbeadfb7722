"""Training that does not train stops; explosions are reported; non-finite settings never start (no Ray)."""

from __future__ import annotations

import math

import pytest

from refine.driver.health import StepHealth, TrainingStopped
from refine.preflight.prepare import prepare_config


def step(skipped, steps=1, loss=2.0):
    return {"actor/optimizer_steps_ttt": steps, "actor/skipped_optimizer_steps_ttt": skipped,
            "actor/ntp_loss_raw_ttt": loss}


def test_consecutive_untrained_steps_stop_the_run_and_are_counted():
    health = StepHealth(max_consecutive_skips=3, vocab_size=512)
    flags = []
    for i, metrics in enumerate([step(0), step(1), step(1), step(0), step(1), step(2, 2), step(1, 1, math.nan)]):
        flags.append(health.record(metrics, i + 1))
        assert metrics["actor/skipped_steps"] == metrics["actor/skipped_optimizer_steps_ttt"]
    # a step with one of two optimiser steps skipped still trained; a nan loss did not
    assert flags == [True, False, False, True, False, False, False]
    assert health.must_stop and health.skipped_total == 6  # 0+1+1+0+1+2+1
    assert "3 consecutive step(s) did not train" in health.stop_message(7, "/runs/x/global_step_3")
    assert "/runs/x/global_step_3" in health.stop_message(7, "/runs/x/global_step_3")


def test_partially_skipped_step_counts_as_trained():
    health = StepHealth(max_consecutive_skips=1, vocab_size=None)
    assert health.record(step(1, 2), 1) and not health.must_stop


def test_an_ntp_loss_above_ln_vocab_after_being_below_is_reported_once(capsys):
    health = StepHealth(max_consecutive_skips=3, vocab_size=512)  # ln 512 = 6.238
    health.record(step(0, loss=7.0), 1)  # above from the start (an untrained model): no warning
    assert "WARNING" not in capsys.readouterr().out
    health.record(step(0, loss=3.0), 2)
    health.record(step(0, loss=6.3), 3)
    health.record(step(0, loss=9.0), 4)
    out = capsys.readouterr().out
    assert out.count("WARNING") == 1 and "step 3" in out and "ln(vocab) = 6.238" in out


@pytest.mark.parametrize("override,key", [
    ("refine.ppo_coef=nan", "refine.ppo_coef"), ("refine.sft_coef=inf", "refine.sft_coef"),
    ("refine.temperature=nan", "refine.temperature"), ("actor_rollout_ref.actor.optim.lr=nan",
                                                        "actor_rollout_ref.actor.optim.lr"),
    ("refine.max_consecutive_skips=0", "refine.max_consecutive_skips"),
])
def test_non_finite_settings_are_refused_before_ray(compose_config, override, key):
    with pytest.raises(ValueError, match=rf"^{key}=.*(finite|>= 1)"):
        prepare_config(compose_config([override]))


def test_a_stop_inside_ray_becomes_one_line():
    from refine.main import run_stop_reason
    from refine.driver.checkpoints import CheckpointError

    class FakeRayTaskError(RuntimeError):  # what ray.get raises: the worker-side exception in `.cause`
        def __init__(self, cause):
            super().__init__("Traceback ...\nlots of lines")
            self.cause = cause

    assert run_stop_reason(FakeRayTaskError(TrainingStopped("training stopped at step 3"))) == \
        "training stopped at step 3"
    assert run_stop_reason(FakeRayTaskError(CheckpointError("saving failed"))) == "saving failed"
    assert run_stop_reason(FakeRayTaskError(ValueError("other"))) is None
    assert run_stop_reason(KeyError("x")) is None


def test_a_run_that_stopped_training_exits_with_code_3_and_one_line(monkeypatch, capsys):
    """The entry point turns a TrainingStopped raised inside the run into one line on stderr and exit code 3."""
    import sys

    import refine.main as entry

    def stopped_run(config, *, prepared=False):
        raise TrainingStopped("training stopped at step 3: 3 consecutive step(s) did not train")

    monkeypatch.setattr(entry, "run", stopped_run)
    monkeypatch.setattr(entry, "prepare", lambda config: None)
    monkeypatch.setattr(sys, "argv", ["refine.main", "+preset=embedded_demo"])
    with pytest.raises(SystemExit) as exit_info:
        entry.main()
    assert exit_info.value.code == 3
    assert capsys.readouterr().err.strip() == ("refine: training stopped at step 3: 3 consecutive step(s) did not "
                                               "train")
