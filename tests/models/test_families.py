"""Every family of the table (`refine.models.families`), on its tiny CPU config, plus a hybrid fla config (softmax
attention in layer 1): saved to a folder it passes the trainer's model checks; verl's head names read; one
faithful inner step runs through the worker ops, with the left-padded prompts it rolls out from scoring exactly as
each prompt alone (the faithful mode's premise); the fast mode runs or is refused in one line.
Fast = faithful for every family whose fast mode runs: tests/trainer/test_fast_nsp.py."""

from __future__ import annotations

import shutil

import pytest
import torch

from refine.models.families import FAMILIES, UnknownFamily, config_view, family_for, supported_model_types
from refine.models.tiny import REPO_ROOT, tiny_config
from refine.nsp.advantages import grpo_advantages
from refine.nsp.prefixes import build_rollout_batch, expand_targets
from refine.nsp.rewards import all_sequence_rewards, token_level_rewards
from refine.nsp.update_plan import normalized_ppo_mini_batch_rows, plan_combined_update
from refine.worker import model_ops

PAD, S, K, C = 2, 48, 3, 2
HYBRID = {"attn": {"layers": [1], "num_heads": 2}}
# LaCT's official padding moves chunk boundaries with the pads (spec Q7/Q18: by design, tests/lact cover it), so
# the padding check below holds for it only with exact padding
OVERRIDES = {"lact": {"lact_exact_padding": True}}
CASES = {f.name: (f.name, OVERRIDES.get(f.name, {})) for f in FAMILIES} | {"delta_net+attn": ("delta_net", HYBRID)}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    from transformers import AutoModelForCausalLM

    name, overrides = CASES[request.param]
    config = tiny_config(name, **overrides)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).float()
    with torch.no_grad():  # some families zero-initialise output projections (RWKV-7), which stops every gradient
        for p in model.parameters():  # behind them at step 0; small noise lets the step reach every parameter
            p.add_(1e-2 * torch.randn_like(p))
    return request.param, config, model


def test_a_saved_tiny_model_passes_the_model_checks_and_has_verls_head_names(case, tmp_path):
    from refine.preflight.model_checks import check_model_dir, check_tokenizer

    _, config, model = case
    model.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(REPO_ROOT / "data" / "demo" / "model" / name, tmp_path)
    check_model_dir(str(tmp_path))
    check_tokenizer(str(tmp_path))
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads  # what verl's monkey patch reads
    assert isinstance(heads, int) and isinstance(kv_heads, int) and heads > 0 and heads % kv_heads == 0


def faithful_step(model, ids, mask):
    """One inner step as the worker RPCs run it: analysis, rollouts, old log-probs, rewards, GRPO, update."""
    model.eval()
    found = model_ops.analyse(model, ids, mask, n_chunks=C, response_length=K, sampling="entropy",
                              micro_batch_size=2, generator=torch.Generator().manual_seed(1))
    rollout = build_rollout_batch(ids, mask, found.positions, response_length=K, pad_token_id=PAD)
    torch.manual_seed(2)
    responses = model_ops.generate_responses(model, rollout.input_ids, rollout.attention_mask, response_length=K,
                                             temperature=1.0, top_p=1.0, top_k=0, micro_batch_size=4,
                                             eos_token_id=PAD, pad_token_id=PAD)
    old, hidden = model_ops.old_log_probs_and_hidden(model, rollout.input_ids, rollout.attention_mask, responses,
                                                     temperature=1.0, micro_batch_size=4)
    rewards = all_sequence_rewards(hidden, expand_targets(found.target_hidden), responses, rollout.ground_truth_ids)
    ones = torch.ones_like(responses, dtype=torch.float32)
    advantages = grpo_advantages(token_level_rewards(rewards["cosine_similarity"], ones), ones, rollout.uid)[0]
    rows = normalized_ppo_mini_batch_rows(2, n_chunks=C, ttt_n=1, world_size=1)
    plan = plan_combined_update(2, 2 * C, ppo_mini_batch_rows=rows, micro_batch_size=2, n_chunks=C, ttt_n=1,
                                sft_loss_coef=1.0, ppo_loss_coef=1.0)
    model.train()
    model.zero_grad()
    sft, pg, _ = model_ops.combined_backward(
        model, {"input_ids": ids, "attention_mask": mask},
        {"prompts": rollout.input_ids, "prompt_mask": rollout.attention_mask, "responses": responses,
         "old_log_probs": old, "advantages": advantages}, plan.mini_batches[0], plan, temperature=1.0,
        mask_pads=False)
    return rollout, responses, old, rewards, sft, pg


def test_one_faithful_inner_step_through_the_worker_ops(case):
    _, _, model = case
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 512, (2, S), generator=gen)
    mask = torch.ones(2, S, dtype=torch.long)
    ids[0, :9], mask[0, :9] = PAD, 0  # a left-padded document
    rollout, responses, old, rewards, sft, pg = faithful_step(model, ids, mask)

    assert responses.shape == (2 * C, K) and not (responses == PAD).any()
    assert all(torch.isfinite(torch.stack([*sft, *pg])))
    assert rewards["cosine_similarity"].abs().max() <= 1 + 1e-6
    trained = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(trained) >= 0.9 * len(list(model.parameters())), "the update should reach (nearly) every parameter"
    # the rollout prompts are re-left-padded prefixes: each must score its response as the prefix alone does
    model.eval()
    with torch.no_grad():
        for row in range(len(responses)):
            real = rollout.attention_mask[row].bool()
            alone, _ = model_ops.old_log_probs_and_hidden(
                model, rollout.input_ids[row:row + 1, real], rollout.attention_mask[row:row + 1, real],
                responses[row:row + 1], temperature=1.0, micro_batch_size=1)
            assert (alone[0] - old[row]).abs().max() <= 1e-4, row


def test_the_fast_mode_runs_or_is_refused_in_one_line(case):
    from refine.models.state_branching import check_branchable

    name, config, model = case
    reason = family_for(config.model_type).fast_mode_refusal(config_view(config))
    if reason is None:
        check_branchable(model)  # tests/trainer/test_fast_nsp.py: fast = faithful for these
        return
    with pytest.raises(ValueError) as err:
        check_branchable(model)
    message = str(err.value)
    assert "\n" not in message and config.model_type in message and "refine.nsp_mode=faithful" in message
    assert family_for(config.model_type).name in message


def test_a_model_type_outside_the_table_is_refused_before_ray_in_one_line(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from refine.preflight.model_checks import ModelCheckError, check_model_dir

    outside = next(t for t in ("bitnet", "nsa", "mesa_net", "samba") if t not in supported_model_types())
    with pytest.raises(UnknownFamily):
        family_for(outside)
    config = AutoConfig.for_model(outside, hidden_size=32, num_hidden_layers=1, num_heads=2, vocab_size=64)
    with torch.device("meta"):
        AutoModelForCausalLM.from_config(config)  # fla registers it: only the table refuses it
    config.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelCheckError) as err:
        check_model_dir(str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and repr(outside) in message and "delta_net" in message
    assert "refine/models/families.py" in message
