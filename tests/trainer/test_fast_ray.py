"""`refine.nsp_mode=fast` end to end through Ray on CPU (tiny demo DeltaNet and a tiny LaCT, fp32): the same step
as the faithful mode through the workers, FSDP world size 2 with kill-and-resume, post-training and test-time training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.trainer.test_e2e_ray import COMPARED_PREFIXES, check_steps, step_records
from tests.trainer.test_post_ttt_ray import ruler_overrides

pytestmark = pytest.mark.slow

FAST = ["refine.nsp_mode=fast"]


def tiny_lact_dir(path):
    """A tiny LaCT with exact padding (what the fast mode needs) and the demo tokenizer."""
    import refine.models  # noqa: F401
    from refine.models.lact import tiny_lact_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from refine.preflight.compose import REPO_ROOT

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_lact_config(lact_exact_padding=True)).save_pretrained(path)
    AutoTokenizer.from_pretrained(REPO_ROOT / "data" / "demo" / "model").save_pretrained(path)
    return path


@pytest.mark.parametrize("model,mini_batch_size", [("delta_net", 2), ("delta_net", 1), ("lact", 1)])
def test_fast_step_equals_the_faithful_step_through_the_workers(make_trainer, tmp_path, model, mini_batch_size):
    """From the same weights, batch and seed: the same positions; with the faithful rollouts injected, the same
    old log-probs, rewards, advantages, losses, clip fractions and gradient norms. One update pair (rollouts made
    inside the update) and two (the second document rolled out before the first optimiser step). DeltaNet (the
    demo model) and a tiny LaCT with exact padding."""
    import dataclasses

    from verl import DataProto

    from refine.nsp.prefixes import expand_targets, gather_target_ids
    from refine.nsp.rewards import all_sequence_rewards, chance_cosine, chance_partners
    from refine.driver.nsp_step import StepSettings, fast_inner_step, faithful_inner_step
    from tests.trainer.worker_probe import recorded_calls

    model_path = [f"actor_rollout_ref.model.path={tiny_lact_dir(tmp_path / 'lact')}"] if model == "lact" else []
    trainer = make_trainer(FAST + model_path + [f"trainer.default_local_dir={tmp_path}"])
    wg, rc = trainer.actor_rollout_wg, dataclasses.replace(trainer.rc, mini_batch_size=mini_batch_size)
    batch = DataProto.from_single_dict(next(iter(trainer.train_dataloader)))
    inner = DataProto.from_dict(tensors={"input_ids": batch.batch["input_ids"],
                                         "attention_mask": batch.batch["attention_mask"]},
                                non_tensors={"uid": np.array(["a", "b"], dtype=object)})
    settings = StepSettings(world_size=1, pad_token_id=trainer.pad_token_id, seed=11, sft=True, ppo=True)
    wg.snapshot_state()
    with recorded_calls(wg, "nsp_analyse", "nsp_generate", "nsp_old_log_prob", "nsp_update") as calls:
        ref_metrics = faithful_inner_step(wg, inner, rc, settings)
    wg.restore_state()
    analysis = calls["nsp_analyse"][0][1].batch
    ref_positions, ttt_n = analysis["positions"], rc.n_per_prefix
    ref_responses = calls["nsp_generate"][0][1].batch["responses"].flatten(0, 1)
    ref_old = calls["nsp_old_log_prob"][0][1].batch
    ref_rewards = all_sequence_rewards(
        ref_old["response_hidden"].flatten(0, 1), expand_targets(analysis["target_hidden"], ttt_n), ref_responses,
        expand_targets(gather_target_ids(batch.batch["input_ids"], ref_positions, rc.response_length), ttt_n))
    settings.extra_meta = {"responses": ref_responses}
    with recorded_calls(wg, "nsp_fast_step") as fast_calls:
        fast_metrics = fast_inner_step(wg, inner, rc, settings)
    fast = fast_calls["nsp_fast_step"][0][1].batch

    assert torch.equal(fast["position"].view(len(batch), rc.n_chunks, ttt_n)[:, :, 0], ref_positions)
    assert torch.equal(fast["responses"], ref_responses)
    torch.testing.assert_close(fast["old_log_probs"], ref_old["old_log_probs"].flatten(0, 1), rtol=0, atol=1e-5)
    for kind, value in ref_rewards.items():
        torch.testing.assert_close(fast[f"reward_{kind}"], value, rtol=0, atol=1e-5)
    ref_chance = chance_cosine(ref_old["response_hidden"].flatten(0, 1),
                               expand_targets(analysis["target_hidden"], ttt_n),
                               chance_partners(len(batch), rc.n_chunks, ttt_n))
    torch.testing.assert_close(fast["reward_cosine_chance"], ref_chance, rtol=0, atol=1e-5)
    ref_advantages = calls["nsp_update"][0][0].batch["advantages"].flatten(0, 1)
    torch.testing.assert_close(fast["advantages"], ref_advantages, rtol=1e-4, atol=1e-4)
    for key in ("actor/sft_loss_ttt", "actor/pg_loss_ttt", "actor/pg_clipfrac_ttt", "actor/ppo_kl_ttt",
                "actor/grad_norm_ttt", "reward/cs_reward_mean", "reward/cs_reward_chance_mean",
                "reward/cs_reward_above_chance_mean", "critic/advantages/max_ttt", "prompt_length/mean_ttt",
                "response_length/mean_ttt"):
        # the KL is a mean of log-prob differences, which agree to the log-probs' own 1e-5
        tolerance = 1e-5 if key == "actor/ppo_kl_ttt" else 1e-6
        assert fast_metrics[key] == pytest.approx(ref_metrics[key], rel=1e-4, abs=tolerance), key
    for key in ("timing_s/forward_ttt", "timing_s/gen_ttt", "timing_s/update_actor_ttt"):
        assert fast_metrics[key] > 0, key
    # a separate rollout pass (state pass, teacher-forced old log-probs) only for documents after the first step
    assert (fast_metrics["timing_s/state_pass_ttt"] > 0) == (mini_batch_size == 1)
    assert (fast_metrics["timing_s/old_log_prob_ttt"] > 0) == (mini_batch_size == 1)


RESUME = FAST + ["trainer.n_gpus_per_node=2", "trainer.save_freq=2", "trainer.resume_mode=auto",
                 "trainer.val_before_train=true", "trainer.test_freq=4"]


def test_fast_world_size_2_kill_and_resume_matches_uninterrupted(make_trainer, params, close, tmp_path):
    """Two FSDP ranks stay in lockstep (documents with different positions run the same number of forwards), the
    weights move, and a run cut after step 2 and resumed reproduces the uninterrupted one."""
    full = make_trainer(RESUME + ["trainer.total_training_steps=4", f"trainer.default_local_dir={tmp_path / 'full'}"])
    before = params(full)
    full.fit()
    expected = check_steps(full, 4)
    assert (params(full) - before).abs().max() > 0
    close(full)
    first = make_trainer(RESUME + ["trainer.total_training_steps=2", f"trainer.default_local_dir={tmp_path / 'cut'}"])
    first.fit()
    close(first)
    resumed = make_trainer(RESUME + ["trainer.total_training_steps=4", f"trainer.default_local_dir={tmp_path / 'cut'}"])
    resumed.fit()
    got = step_records(resumed)
    for step in (3, 4):
        for key, value in expected[step].items():
            if key.startswith(COMPARED_PREFIXES) and "memory" not in key:
                assert got[step][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)


def test_fast_post_training_then_test_time_training(make_trainer, params, ruler_files, tmp_path):
    """Post-training (inner fast NSP + task SFT) for 2 steps with RULER-scored validation, then test-time training
    (fast NSP on each validation batch, then greedy answers) on the same workers."""
    import dataclasses

    trainer = make_trainer(FAST + ruler_overrides(ruler_files, tmp_path) + [
        "refine.task_sft_update=true", "refine.val_get_loss=false", "trainer.total_training_steps=2",
        "trainer.test_freq=2", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"])
    before = params(trainer)
    trainer.fit()
    steps = step_records(trainer)
    assert sorted(steps) == [1, 2]
    for record in steps.values():
        for key in ("actor/sft_loss", "actor/sft_loss_ttt", "actor/pg_loss_ttt", "reward/cs_reward_mean",
                    "timing_s/gen_ttt"):
            assert key in record, key
    assert 0.0 <= steps[2]["val_reward"] <= 1.0 and steps[2]["val_n_scored"] == 4.0
    after_post = params(trainer)
    assert (after_post - before).abs().max() > 0

    trainer.rc = dataclasses.replace(trainer.rc, ttt_sft_update=False, ttt_ppo_update=False, task_sft_update=False,
                                     val_ttt_sft_update=True, val_ttt_ppo_update=True)
    metrics = trainer._validate()
    assert metrics["val_n_scored"] == 4.0 and 0.0 <= metrics["val_reward"] <= 1.0
    assert (params(trainer) - after_post).abs().max() > 0, "test-time training did not change the weights"


def test_fast_midtraining_of_new_families_through_ray(make_trainer, params, close, tmp_path):
    """Three families new to the table, each saved from its tiny config with the demo tokenizer and trained one fast
    step through Ray (one each, for the suite's time): Mamba2 (recurrent: SSM state and convolution cache), a
    hybrid DeltaNet with softmax attention in layer 1 and a transformers Llama (their keys/values branch as the
    state at r - 1)."""
    import refine.models  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from refine.models.tiny import tiny_config
    from refine.preflight.compose import REPO_ROOT

    for name, overrides in (("mamba2", {}), ("delta_net", {"attn": {"layers": [1], "num_heads": 2}}),
                            ("hf_decoder", {})):
        model_dir = tmp_path / name
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(tiny_config(name, **overrides)).save_pretrained(model_dir)
        AutoTokenizer.from_pretrained(REPO_ROOT / "data" / "demo" / "model").save_pretrained(model_dir)
        trainer = make_trainer(FAST + [f"actor_rollout_ref.model.path={model_dir}", "trainer.total_training_steps=1",
                                       f"trainer.default_local_dir={tmp_path / (name + '_run')}"])
        before = params(trainer)
        trainer.fit()
        check_steps(trainer, 1)
        assert (params(trainer) - before).abs().max() > 0, name
        close(trainer)
