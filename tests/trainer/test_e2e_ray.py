"""End to end through Ray on CPU: RefineTrainer + RefineActorWorker on the shipped tiny DeltaNet (fp32).

One Ray session for the module. The driver runs in the test process (the same `build_trainer` the Ray task runner
uses), so the tests can reach the worker group and the metric history directly.
"""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.slow

# Official metric names that every mid-training step must log (spec 1.4).
STEP_KEYS = [
    "reward/cs_reward_mean", "reward/cs_reward_std", "reward/binary_reward_mean", "reward/binary_reward_std",
    "reward/hybrid_reward_mean", "reward/hybrid_reward_std",
    "reward/cs_reward_chance_mean", "reward/cs_reward_above_chance_mean",
    "actor/sft_loss_ttt", "actor/pg_loss_ttt", "actor/pg_clipfrac_ttt", "actor/ppo_kl_ttt",
    "actor/pg_clipfrac_lower_ttt", "actor/grad_norm_ttt", "actor/lr_ttt",
    "perf/max_memory_allocated_gb_ttt", "perf/max_memory_reserved_gb_ttt", "perf/cpu_memory_used_gb_ttt",
    "critic/score/mean_ttt", "critic/advantages/max_ttt", "response_length/mean_ttt", "prompt_length/mean_ttt",
    "training/global_step", "training/epoch",
    "timing_s/step", "timing_s/ttt_update", "timing_s/forward_ttt", "timing_s/gen_ttt", "timing_s/old_log_prob_ttt",
    "timing_s/update_actor_ttt",
]
COMPARED_PREFIXES = ("reward/", "actor/", "critic/", "val_")


def step_records(trainer) -> dict[int, dict]:
    return {r["step"]: r for r in trainer.history if "training/global_step" in r}


def check_steps(trainer, n_steps):
    records = step_records(trainer)
    assert sorted(records) == list(range(1, n_steps + 1))
    for step, record in records.items():
        missing = [key for key in STEP_KEYS if key not in record]
        assert not missing, f"step {step} lacks {missing}"
        assert -1.0 <= record["reward/cs_reward_mean"] <= 1.0
        assert 0.0 <= record["reward/binary_reward_mean"] <= 1.0
        assert -1.0 <= record["reward/hybrid_reward_mean"] <= 2.0
        assert record["response_length/mean_ttt"] == 3.0
        assert math.isfinite(record["actor/sft_loss_ttt"]) and record["actor/grad_norm_ttt"] > 0
    return records


RESUME_SETTINGS = ["trainer.save_freq=2", "trainer.resume_mode=auto", "trainer.val_before_train=true",
                   "trainer.test_freq=4"]


def test_midtrain_world_size_1_and_worker_path(make_trainer, params, tmp_path):
    trainer = make_trainer(RESUME_SETTINGS + ["trainer.total_training_steps=4", f"trainer.default_local_dir={tmp_path}"])
    before = params(trainer)
    trainer.fit()
    records = check_steps(trainer, 4)
    assert "val_loss" in records[4] and 0.0 <= records[4]["val_em_score"] <= 1.0
    assert trainer.history[0]["step"] == 0 and "val_loss" in trainer.history[0]
    after = params(trainer)
    assert (after - before).abs().max() > 0, "the weights did not change"
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "metrics.png").exists()
    check_worker_path(trainer, after)
    check_ntp_only_update(trainer, params)


def check_ntp_only_update(trainer, params):
    """The NTP-only inner update (ttt_ppo_update off) through its RPC: the raw loss logged is the model's own NTP
    loss (pads counted, DeltaNet official) per micro-batch on an independent forward, the official one is / GA,
    and one optimiser step changes the weights."""
    import refine.models  # noqa: F401
    from transformers import AutoModelForCausalLM
    from verl import DataProto

    from refine.driver.nsp_step import StepSettings, ntp_only_step

    import dataclasses

    rc = dataclasses.replace(trainer.rc, micro_batch_size_per_gpu=1)  # 2 documents: 2 micro-batches, GA = 2
    assert rc.ntp_pad_mask == "model"
    before = params(trainer)
    reference = AutoModelForCausalLM.from_pretrained(trainer.config.actor_rollout_ref.model.path).float().eval()
    torch.nn.utils.vector_to_parameters(before, reference.parameters())
    batch = DataProto.from_single_dict(next(iter(trainer.val_dataloader)))
    ids, mask = batch.batch["input_ids"], batch.batch["attention_mask"]
    settings = StepSettings(world_size=1, pad_token_id=trainer.pad_token_id, seed=0, sft=True, ppo=False)
    metrics = ntp_only_step(trainer.actor_rollout_wg, batch, rc, settings)
    raw = []
    with torch.no_grad():
        for row in range(ids.shape[0]):
            logits = reference(input_ids=ids[row:row + 1], attention_mask=mask[row:row + 1], use_cache=False).logits
            raw.append(float(torch.nn.functional.cross_entropy(logits[0, :-1], ids[row, 1:])))
    assert len(raw) == 2
    assert metrics["actor/ntp_loss_raw_ttt"] == pytest.approx(sum(raw) / 2, rel=1e-4)
    assert metrics["actor/sft_loss_ttt"] == pytest.approx(sum(raw) / 2 / 2, rel=1e-4)  # mean of loss / GA
    assert metrics["actor/optimizer_steps_ttt"] == 1 and metrics["actor/grad_norm_ttt"] > 0
    assert (params(trainer) - before).abs().max() > 0


def check_worker_path(trainer, flat_params):
    """One faithful inner step, recorded at the driver-worker boundary: positions, target hidden states, rewards
    and advantages against an independent forward and hand computations on the same weights."""
    import numpy as np
    import refine.models  # noqa: F401
    from transformers import AutoModelForCausalLM
    from verl import DataProto

    from refine.nsp.positions import select_positions
    from refine.driver.nsp_step import StepSettings, faithful_inner_step
    from refine.worker.rpc import worker_seed
    from tests.trainer.worker_probe import recorded_calls

    reference = AutoModelForCausalLM.from_pretrained(trainer.config.actor_rollout_ref.model.path).float().eval()
    torch.nn.utils.vector_to_parameters(flat_params, reference.parameters())
    batch = DataProto.from_single_dict(next(iter(trainer.val_dataloader)))
    ids, mask = batch.batch["input_ids"], batch.batch["attention_mask"]
    rc, k, wg = trainer.rc, trainer.rc.response_length, trainer.actor_rollout_wg

    inner = DataProto.from_dict(tensors={"input_ids": ids, "attention_mask": mask},
                                non_tensors={"uid": np.array(["a", "b"], dtype=object)})
    settings = StepSettings(world_size=1, pad_token_id=trainer.pad_token_id, seed=5, sft=True, ppo=True)
    with recorded_calls(wg, "nsp_analyse", "nsp_generate", "nsp_old_log_prob", "nsp_update") as calls:
        metrics = faithful_inner_step(wg, inner, rc, settings)
    analysis = calls["nsp_analyse"][0][1].batch

    # analysis (before the update, so on `flat_params`): positions = select_positions on entropies of an
    # independent forward, with the worker's generator; targets = that forward's final-norm states at [r, r + k)
    with torch.no_grad():
        out = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    logp = torch.log_softmax(out.logits.float(), -1)
    entropy = -(logp.exp() * logp).sum(-1)
    generator = torch.Generator().manual_seed(worker_seed(settings.seed, 0, 0))
    positions = select_positions(entropy, mask, n_chunks=rc.n_chunks, response_length=k, mode=rc.sampling,
                                 generator=generator)
    assert torch.equal(analysis["positions"], positions)
    targets = torch.stack([torch.stack([out.hidden_states[-1][b, r:r + k] for r in positions[b].tolist()])
                           for b in range(ids.shape[0])])
    torch.testing.assert_close(analysis["target_hidden"], targets, rtol=1e-4, atol=1e-4)

    # rewards by hand (spec 2.A Step 5), ttt_n = 1: mean over the k tokens of the cosine similarity of the hidden
    # states; exact match with the document's own tokens [r, r + k); hybrid = their sum. Checked through the
    # logged reward metrics (mean, unbiased std) of all three kinds.
    responses = calls["nsp_generate"][0][1].batch["responses"].flatten(0, 1)
    response_hidden = calls["nsp_old_log_prob"][0][1].batch["response_hidden"].flatten(0, 1)
    ground_truth = torch.stack([ids[b, r:r + k] for b in range(ids.shape[0]) for r in positions[b].tolist()])
    cosine = torch.nn.functional.cosine_similarity(response_hidden.float(), targets.flatten(0, 1).float(),
                                                   dim=-1).mean(-1)
    binary = (responses == ground_truth).float().mean(-1)
    by_kind = {"cosine_similarity": cosine, "binary": binary, "hybrid": cosine + binary}
    for kind, stem in (("cosine_similarity", "cs"), ("binary", "binary"), ("hybrid", "hybrid")):
        assert metrics[f"reward/{stem}_reward_mean"] == pytest.approx(float(by_kind[kind].mean()), abs=1e-5)
        assert metrics[f"reward/{stem}_reward_std"] == pytest.approx(float(by_kind[kind].std()), abs=1e-5)

    # the update gets the rollouts and old log-probs the workers returned, and hand GRPO advantages:
    # (r - group mean) / (unbiased group std + 1e-6), one group per document (ttt_n = 1), the same on every token
    update_in = calls["nsp_update"][0][0].batch
    assert torch.equal(update_in["positions"], positions)
    assert torch.equal(update_in["responses"].flatten(0, 1), responses)
    assert torch.equal(update_in["old_log_probs"], calls["nsp_old_log_prob"][0][1].batch["old_log_probs"])
    reward = by_kind[rc.reward].view(ids.shape[0], rc.n_chunks)
    by_hand = (reward - reward.mean(1, keepdim=True)) / (reward.std(1, keepdim=True) + 1e-6)
    torch.testing.assert_close(update_in["advantages"], by_hand.unsqueeze(-1).expand(-1, -1, k),
                               rtol=1e-5, atol=1e-5)


def test_midtrain_world_size_2(make_trainer, params, tmp_path):
    trainer = make_trainer(["trainer.n_gpus_per_node=2", "trainer.total_training_steps=3",
                            f"trainer.default_local_dir={tmp_path}"])
    before = params(trainer)
    trainer.fit()
    check_steps(trainer, 3)
    assert (params(trainer) - before).abs().max() > 0


def test_kill_and_resume_matches_uninterrupted(make_trainer, close, tmp_path):
    common = RESUME_SETTINGS
    full = make_trainer(common + ["trainer.total_training_steps=4", f"trainer.default_local_dir={tmp_path / 'full'}"])
    full.fit()
    close(full)
    expected = step_records(full)  # its own reference: no state shared with other tests
    first = make_trainer(common + ["trainer.total_training_steps=2", f"trainer.default_local_dir={tmp_path / 'cut'}"])
    first.fit()
    close(first)  # the "kill": a fresh trainer and fresh workers resume from the checkpoint
    assert (tmp_path / "cut" / "global_step_2" / "refine_state.pt").exists()
    resumed = make_trainer(common + ["trainer.total_training_steps=4", f"trainer.default_local_dir={tmp_path / 'cut'}"])
    resumed.fit()
    got = step_records(resumed)
    assert sorted(got) == [1, 2, 3, 4]  # steps 1-2 kept from the first run's metrics file
    for step in (3, 4):
        for key, value in expected[step].items():
            if key.startswith(COMPARED_PREFIXES) and "memory" not in key:
                assert got[step][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)


def test_midtrain_tiny_lact_two_steps(make_trainer, params, tmp_path):
    """The same loop on a tiny LaCT (random init, shipped tokenizer): the trainer reaches models only via Auto."""
    import refine.models  # noqa: F401
    from refine.models.lact import tiny_lact_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from refine.preflight.compose import REPO_ROOT

    torch.manual_seed(0)
    model_dir = tmp_path / "lact"
    AutoModelForCausalLM.from_config(tiny_lact_config()).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(REPO_ROOT / "data" / "demo" / "model").save_pretrained(model_dir)
    trainer = make_trainer([f"actor_rollout_ref.model.path={model_dir}", "trainer.total_training_steps=2",
                            f"trainer.default_local_dir={tmp_path / 'run'}"])
    before = params(trainer)
    trainer.fit()
    check_steps(trainer, 2)
    assert (params(trainer) - before).abs().max() > 0
