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


def check_worker_path(trainer, flat_params):
    """Worker-path entropies/positions/targets/rewards/advantages equal the pure functions on the same inputs."""
    import refine.models  # noqa: F401
    from transformers import AutoModelForCausalLM
    from verl import DataProto

    from refine.nsp.positions import select_positions
    from refine.trainer.nsp_step import StepSettings, faithful_inner_step
    from refine.trainer.rpc import worker_seed

    reference = AutoModelForCausalLM.from_pretrained(trainer.config.actor_rollout_ref.model.path).float().eval()
    torch.nn.utils.vector_to_parameters(flat_params, reference.parameters())
    batch = DataProto.from_single_dict(next(iter(trainer.val_dataloader)))
    ids, mask = batch.batch["input_ids"], batch.batch["attention_mask"]
    rc = trainer.rc

    # analysis: entropies vs an independent forward, positions vs select_positions with the same generator
    analysis = trainer.actor_rollout_wg.nsp_analyse(DataProto.from_dict(
        tensors={"input_ids": ids, "attention_mask": mask},
        meta_info={"n_chunks": rc.n_chunks, "response_length": rc.response_length, "sampling": rc.sampling,
                   "micro_batch_size": 1, "seed": 77, "return_entropies": True}))
    with torch.no_grad():
        out = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    logp = torch.log_softmax(out.logits.float(), -1)
    entropy = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(analysis.batch["entropies"], entropy, rtol=1e-4, atol=1e-4)
    generator = torch.Generator().manual_seed(worker_seed(77, 0, 0))
    positions = select_positions(analysis.batch["entropies"], mask, n_chunks=rc.n_chunks,
                                 response_length=rc.response_length, mode=rc.sampling, generator=generator)
    assert torch.equal(analysis.batch["positions"], positions)
    k = rc.response_length
    expected_targets = torch.stack([torch.stack([out.hidden_states[-1][b, r:r + k] for r in positions[b].tolist()])
                                    for b in range(ids.shape[0])])
    torch.testing.assert_close(analysis.batch["target_hidden"], expected_targets, rtol=1e-4, atol=1e-4)

    # one whole inner step: rewards and advantages vs the pure functions on the step's own tensors
    import numpy as np

    inner = DataProto.from_dict(tensors={"input_ids": ids, "attention_mask": mask},
                                non_tensors={"uid": np.array(["a", "b"], dtype=object)})
    settings = StepSettings(world_size=1, pad_token_id=trainer.pad_token_id, seed=5, sft=True, ppo=True)
    _, extras = faithful_inner_step(trainer.actor_rollout_wg, inner, rc, settings)
    # the ground truth is the document's own tokens [r, r + k) (an independent gather, by hand)
    by_row = [ids[b, r:r + rc.response_length] for b in range(ids.shape[0]) for r in extras["positions"][b].tolist()]
    assert torch.equal(extras["ground_truth_ids"], torch.stack(by_row))
    # the rewards by hand (spec 2.A step 5): mean over the k tokens of the cosine similarity of the hidden states;
    # exact token match; hybrid = their sum
    cosine = torch.nn.functional.cosine_similarity(extras["response_hidden"].float(),
                                                   extras["target_hidden"].float(), dim=-1).mean(-1)
    binary = (extras["responses"] == extras["ground_truth_ids"]).float().mean(-1)
    torch.testing.assert_close(extras["rewards"]["cosine_similarity"], cosine, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(extras["rewards"]["binary"], binary)
    torch.testing.assert_close(extras["rewards"]["hybrid"], cosine + binary, rtol=1e-5, atol=1e-6)
    expected_reward = {"cosine_similarity": cosine, "binary": binary, "hybrid": cosine + binary}[rc.reward]
    # hand GRPO: (r - group mean) / (unbiased group std + 1e-6), groups = documents (ttt_n = 1)
    by_hand = torch.empty_like(expected_reward)
    assert extras["uid"].tolist() == ["a"] * rc.n_chunks + ["b"] * rc.n_chunks  # one group per document
    for uid in set(extras["uid"].tolist()):
        sel = torch.tensor([u == uid for u in extras["uid"].tolist()])
        group = expected_reward[sel]
        by_hand[sel] = (group - group.mean()) / (group.std() + 1e-6)
    # the outcome advantage is the same on every token of a row
    torch.testing.assert_close(extras["advantages"], by_hand.unsqueeze(1).expand(-1, k), rtol=1e-5, atol=1e-6)


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

    from refine.trainer.config import REPO_ROOT

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
