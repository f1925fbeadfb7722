"""Fast NSP mode (`refine.worker.fast.ops`) against the faithful one (`refine.worker.model_ops`), no Ray.

Every family of the table (`refine.models.families`) whose fast mode runs: its tiny config (LaCT with exact
padding, chunk 16, window 24: the positions cross chunk and window boundaries), in fp32 on CPU. The faithful reference re-encodes every re-left-padded prefix
(`build_rollout_batch` + full forwards), exactly as the official code; the fast mode branches off the recurrent
state. With the same documents, positions and responses both must give the same old log-probs, hidden states,
rewards, losses and parameter gradients.
"""

from __future__ import annotations

import pytest
import torch

from refine.models.families import FAMILIES, KV_CACHE, LACT_CACHE, config_view, family_named, family_of
from refine.nsp.prefixes import build_rollout_batch, gather_target_hidden
from refine.nsp.rewards import all_sequence_rewards
from refine.nsp.update_plan import normalized_ppo_mini_batch_rows, plan_combined_update
from refine.worker import model_ops
from refine.worker.fast import ops as fast_ops
from refine.worker.fast import update as fast_update

S, K, PAD = 160, 5, 2
# row 0: 30 left pads, so the clamp bounds are [50, 140]; positions at both bounds and two adjacent ones.
# row 1: no pads, bounds [20, 140]; two positions collapsed onto the lower bound (as the clamp can do).
POSITIONS = torch.tensor([[50, 51, 140], [20, 20, 97]])
C = POSITIONS.shape[1]


# case -> (family, tiny-config overrides): fast equals faithful for LaCT only with exact padding (spec Q7/Q18); a
# hybrid fla config (softmax attention in layer 1) and a transformers decoder branch their keys/values
CASES = {f.name: (f.name, {}) for f in FAMILIES} | {
    "lact": ("lact", {"lact_exact_padding": True}),
    "delta_net+attn": ("delta_net", {"attn": {"layers": [1], "num_heads": 2}}),
}


def tiny_fast_config(case: str):
    from refine.models.tiny import tiny_config

    family, overrides = CASES[case]
    return tiny_config(family, **overrides)


# every case whose tiny config the fast mode accepts (the others are refused before Ray: test_families.py)
FAST_FAMILIES = [case for case, (family, _) in CASES.items()
                 if family_named(family).fast_mode_refusal(config_view(tiny_fast_config(case))) is None]


def build_model(kind: str):
    import refine.models  # noqa: F401
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_fast_config(kind)).float()
    model.train()
    return model


def documents():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 512, (2, S), generator=gen)
    mask = torch.ones(2, S, dtype=torch.long)
    mask[0, :30] = 0
    ids[0, :30] = PAD
    return ids, mask


@pytest.fixture(scope="module", params=FAST_FAMILIES)
def case(request):
    model = build_model(request.param)
    ids, mask = documents()
    return model, ids, mask


def faithful_rollout_inputs(ids, mask, ttt_n):
    return build_rollout_batch(ids, mask, POSITIONS, response_length=K, pad_token_id=PAD, ttt_n=ttt_n)


def random_responses(n_rows, seed=2):
    return torch.randint(3, 512, (n_rows, K), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ttt_n", [1, 2])
def test_old_log_probs_hidden_and_rewards_equal_faithful(case, ttt_n):
    model, ids, mask = case
    rollout = faithful_rollout_inputs(ids, mask, ttt_n)
    responses = random_responses(len(rollout))
    with torch.no_grad():
        old_ref, hidden_ref = model_ops.old_log_probs_and_hidden(
            model, rollout.input_ids, rollout.attention_mask, responses, temperature=0.7, micro_batch_size=4)
        fast = fast_ops.fast_rollout(model, ids, mask, POSITIONS, ttt_n=ttt_n, response_length=K, temperature=0.7,
                                     processors=None, micro_batch_size=2, generator=None, responses=responses)
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    targets = gather_target_hidden(full, POSITIONS, K).flatten(0, 1).repeat_interleave(ttt_n, dim=0)
    assert torch.equal(fast.ground_truth_ids, rollout.ground_truth_ids)
    assert (fast.old_log_probs - old_ref).abs().max() <= 1e-5
    assert (fast.response_hidden - hidden_ref).abs().max() <= 1e-5
    ref_rewards = all_sequence_rewards(hidden_ref, targets, responses, rollout.ground_truth_ids)
    fast_rewards = all_sequence_rewards(fast.response_hidden, targets, responses, fast.ground_truth_ids)
    for kind, value in ref_rewards.items():
        assert (fast_rewards[kind] - value).abs().max() <= 1e-5, kind


def plan_for(ttt_n, micro):
    rows = normalized_ppo_mini_batch_rows(2, n_chunks=C, ttt_n=ttt_n, world_size=1)
    return plan_combined_update(2, 2 * C * ttt_n, ppo_mini_batch_rows=rows, micro_batch_size=micro, n_chunks=C,
                                ttt_n=ttt_n, sft_loss_coef=0.7, ppo_loss_coef=1.3)


def floats(result):
    """(NTP losses, pg losses, metrics) of a backward as plain floats (they come back as 0-d tensors)."""
    sft, pg, metrics = result
    return ([float(v) for v in sft], [float(v) for v in pg],
            {key: [float(v) for v in values] for key, values in metrics.items()})


def gradients(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("ttt_n,micro,mask_pads,checkpoint", [(1, 2, False, False), (1, 3, True, False),
                                                                (2, 4, False, False), (1, 2, False, True)])
def test_loss_and_every_gradient_equal_faithful(case, ttt_n, micro, mask_pads, checkpoint):
    """Same documents, positions and (injected) responses; old log-probs moved off the current ones so that the
    clip and the dual clip are reached; PPO micro-batches that split a document's rows (micro 4 with 6 rows);
    segment-level activation checkpointing (what the fast update uses when the model has gradient checkpointing
    on)."""
    model, ids, mask = case
    rollout = faithful_rollout_inputs(ids, mask, ttt_n)
    n = len(rollout)
    responses = random_responses(n)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        current, _ = model_ops.old_log_probs_and_hidden(model, rollout.input_ids, rollout.attention_mask, responses,
                                                        temperature=1.0, micro_batch_size=n)
    old = current + 0.4 * torch.randn(n, K, generator=gen)
    advantages = torch.randn(n, 1, generator=gen).expand(n, K).clone()
    plan = plan_for(ttt_n, micro)
    pair = plan.mini_batches[0]
    docs = {"input_ids": ids, "attention_mask": mask}

    model.zero_grad()
    ref = model_ops.combined_backward(
        model, docs, {"prompts": rollout.input_ids, "prompt_mask": rollout.attention_mask, "responses": responses,
                      "old_log_probs": old, "advantages": advantages},
        pair, plan, temperature=1.0, mask_pads=mask_pads)
    ref_grads = gradients(model)
    model.zero_grad()
    fast = fast_update.fast_backward(
        model, docs, {"positions": POSITIONS, "responses": responses, "old_log_probs": old, "advantages": advantages},
        pair, plan, n_rows_per_doc=C * ttt_n, ttt_n=ttt_n, temperature=1.0, mask_pads=mask_pads,
        checkpoint=checkpoint)
    fast_grads = gradients(model)
    model.zero_grad()

    ref_sft, ref_pg, ref_metrics = floats(ref)
    fast_sft, fast_pg, fast_metrics = floats(fast)
    assert fast_sft == pytest.approx(ref_sft, rel=1e-5)
    assert fast_pg == pytest.approx(ref_pg, rel=1e-4, abs=1e-6)
    assert max(ref_metrics["actor/pg_clipfrac_ttt"]) > 0, "the test should reach the clip"
    for key, values in ref_metrics.items():
        assert fast_metrics[key] == pytest.approx(values, abs=1e-5), key
    for name, grad in ref_grads.items():
        rel = (fast_grads[name] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert rel <= 1e-4, f"{name}: relative gradient difference {rel:.2e}"


def test_branch_state_equals_the_prefix_run_alone(case):
    """Every layer's state at r - 1 (recurrent state, short-convolution caches, a hybrid's cached keys/values of the
    real tokens; LaCT: fast weights, open chunk, window) equals that of the (re-left-padded) prefix run by itself."""
    model, ids, mask = case
    rollout = build_rollout_batch(ids, mask, POSITIONS - 1, response_length=K, pad_token_id=PAD)
    with torch.no_grad():
        for b in range(2):
            snaps, _ = fast_ops.run_document(model, ids[b], mask[b], POSITIONS[b].tolist())
            for j, r in enumerate(POSITIONS[b].tolist()):
                row = b * C + j
                alone = model(input_ids=rollout.input_ids[row:row + 1], attention_mask=rollout.attention_mask[row:row + 1],
                              use_cache=True).past_key_values
                if family_of(model.config).state == LACT_CACHE:
                    assert_lact_states_equal(snaps[r - 1], alone, (b, r))
                    continue
                state = snaps[r - 1]
                real_mine = state.valid[0].bool() if state.valid is not None else None
                real_alone = rollout.attention_mask[row].bool()
                if family_of(model.config).state == KV_CACHE:  # a transformers cache: keys/values [1, H, T, D]
                    # its positions count the pads, so the keys carry a shifted rotation (equivalent: the branch
                    # outputs are compared above); the values must be equal
                    alone = [{"attn_state": (c.values.transpose(1, 2),)} for c in alone.layers]
                    state = [{"attn_state": e["attn_state"][1:]} for e in state]
                for layer, (mine, ref) in enumerate(zip(state, alone)):
                    for key, value in mine.items():  # the family's state_keys
                        pairs = list(zip(tensors_of(value), tensors_of(ref[key])))
                        if key == "attn_state" and value is not None:  # the real tokens' keys / values
                            pairs = [(m[:, real_mine], a[:, real_alone]) for m, a in pairs]
                        assert pairs or value is None, (b, r, layer, key)
                        for mine_t, ref_t in pairs:
                            assert (mine_t - ref_t).abs().max() <= 1e-5, (b, r, layer, key)


def tensors_of(value) -> list:
    """The tensors of one cache entry (a tensor, a tuple of them, or None)."""
    if value is None:
        return []
    return [value] if isinstance(value, torch.Tensor) else [t for v in value for t in tensors_of(v)]


def assert_lact_states_equal(mine, alone, where):
    """LaCT: per layer, the fast weights (and momentum) after the last closed chunk, the open chunk's keys, values,
    rates and momentum, and the window's valid keys and values by rank, as the prefix run alone."""
    assert torch.equal(mine.valid_count, alone.valid_count), where
    for layer, (a, b) in enumerate(zip(mine.layers, alone.layer_caches)):
        for key, value in b.fast.tensors().items():
            assert (getattr(a.fast, key) - value).abs().max() <= 1e-5, (*where, layer, key)
        assert torch.equal(a.count, b.count), (*where, layer)
        n = int(b.count[0])
        for key in ("buf_k", "buf_v", "buf_lr", "buf_mom"):
            assert (getattr(a, key)[:, :n] - getattr(b, key)[:, :n]).abs().max() <= 1e-5, (*where, layer, key)
        for cache_a, cache_b in ((a, b), (b, a)):  # the same ranks are kept on both sides
            ranks = set(cache_a.key_rank[cache_a.key_valid].tolist())
            assert ranks == set(cache_b.key_rank[cache_b.key_valid].tolist()), (*where, layer)
        for rank in set(b.key_rank[b.key_valid].tolist()):
            col_a = (a.key_rank == rank) & a.key_valid
            col_b = (b.key_rank == rank) & b.key_valid
            for key in ("key", "value"):
                diff = getattr(a, key)[col_a] - getattr(b, key)[col_b]
                assert diff.abs().max() <= 1e-5, (*where, layer, key, rank)


def test_update_log_probs_equal_old_log_probs_bit_for_bit(case):
    """Before any optimiser step the update's forward gives exactly the old log-probs (PPO ratio exactly 1)."""
    model, ids, mask = case
    responses = random_responses(2 * C)
    with torch.no_grad():
        old = fast_ops.fast_rollout(model, ids, mask, POSITIONS, ttt_n=1, response_length=K, temperature=0.9,
                                    processors=None, micro_batch_size=2, generator=None, responses=responses)
    labels = fast_ops.shifted_labels(ids, mask, mask_pads=False)
    first = fast_ops.first_tokens_of(ids, POSITIONS, 1)
    for b in range(2):
        positions = POSITIONS[b].tolist()
        snaps, loss_sum = fast_ops.run_document(model, ids[b], mask[b], positions, shift_labels=labels[b])
        assert loss_sum.requires_grad
        rows = slice(b * C, (b + 1) * C)
        new, _ = fast_ops.branch_forward(model, fast_ops.row_snapshots(snaps, positions, 1), first[rows],
                                         responses[rows], temperature=0.9)
        assert new.requires_grad
        assert torch.equal(new.detach(), old.old_log_probs[rows])


def test_segments_are_the_same_count_for_every_document():
    """C segments up to the last cut whatever the positions, so FSDP ranks run the same number of forwards."""
    assert fast_ops.segment_bounds([20, 20, 97]) == [0, 19, 57, 96]  # [19, 96) halved
    assert fast_ops.segment_bounds([50, 51, 140]) == [0, 49, 50, 139]
    assert fast_ops.segment_bounds([30, 30, 30]) == [0, 14, 21, 29]  # [0, 29) halved, then [14, 29)
    with pytest.raises(ValueError, match="too short"):
        fast_ops.segment_bounds([3, 3, 3, 3])


@pytest.mark.parametrize("kind", ["delta_net", "lact"])
def test_sampling_follows_the_faithful_generate_distribution(kind):
    """Token frequencies of fast rollouts from one prefix vs HF `generate` on the re-left-padded prefix (the
    faithful rollout), with temperature, top-k and top-p on; every rollout is exactly k tokens, never EOS."""
    from refine.nsp.sampling import sampling_processors

    model = build_model(kind)
    model.eval()
    ids, mask = documents()
    draws, k, r = 4000, 2, 80
    rollout = build_rollout_batch(ids[:1], mask[:1], torch.tensor([[r]]), response_length=k, pad_token_id=PAD)
    settings = dict(temperature=0.7, top_k=4, top_p=0.9)  # small support: frequencies settle in 4000 draws
    torch.manual_seed(5)
    faithful = model_ops.generate_responses(
        model, rollout.input_ids.expand(draws, -1), rollout.attention_mask.expand(draws, -1), response_length=k,
        micro_batch_size=draws, eos_token_id=PAD, pad_token_id=PAD, **settings)
    with torch.no_grad():
        snaps, _ = fast_ops.run_document(model, ids[0], mask[0], [r])
        fast = fast_ops.decode_branches(
            model, [snaps[r - 1]] * draws, ids[0, r - 1].expand(draws), response_length=k,
            processors=sampling_processors(**settings, suppress_ids=[PAD]), generator=torch.Generator().manual_seed(6))
    assert fast.shape == (draws, k) and not (fast == PAD).any()
    for step in range(k):
        a = torch.bincount(faithful[:, step], minlength=512).float() / draws
        b = torch.bincount(fast[:, step], minlength=512).float() / draws
        assert (a > 0).sum() > 3, "the distribution should not be degenerate"
        assert 0.5 * (a - b).abs().sum() < 0.06, f"step {step}: total variation {0.5 * (a - b).abs().sum():.3f}"
    # the first token is drawn only from the top-4 of the prefix's next-token logits
    with torch.no_grad():
        logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask).logits[0, -1]
    assert set(fast[:, 0].tolist()) <= set(torch.topk(logits, 4).indices.tolist())


def test_rollouts_made_inside_the_update_give_the_faithful_gradients(case):
    """The first update pair rolls out from its own states (`InlineRollout`): with the same responses and the same
    advantages, loss and every gradient equal the faithful update whose old log-probs come from its own
    re-encoding (ratio 1 up to numerics)."""
    model, ids, mask = case
    rollout = faithful_rollout_inputs(ids, mask, 1)
    n = len(rollout)
    responses = random_responses(n, seed=4)
    advantages = torch.randn(n, 1, generator=torch.Generator().manual_seed(5)).expand(n, K).clone()
    with torch.no_grad():
        old, _ = model_ops.old_log_probs_and_hidden(model, rollout.input_ids, rollout.attention_mask, responses,
                                                    temperature=1.0, micro_batch_size=n)
    plan = plan_for(1, 2)
    docs = {"input_ids": ids, "attention_mask": mask}
    model.zero_grad()
    ref = model_ops.combined_backward(
        model, docs, {"prompts": rollout.input_ids, "prompt_mask": rollout.attention_mask, "responses": responses,
                      "old_log_probs": old, "advantages": advantages}, plan.mini_batches[0], plan,
        temperature=1.0, mask_pads=False)
    ref_grads = gradients(model)

    seen = []
    inline = fast_update.InlineRollout(
        decode=lambda branches, first: responses[len(seen) * C:(len(seen) + 1) * C],
        score=lambda rows, hidden, resp: (seen.append(rows), advantages[rows])[1])
    ppo = {"positions": POSITIONS, "responses": torch.zeros_like(responses), "old_log_probs": torch.zeros(n, K),
           "advantages": torch.zeros(n, K)}
    model.zero_grad()
    fast = fast_update.fast_backward(model, docs, ppo, plan.mini_batches[0], plan, n_rows_per_doc=C, ttt_n=1,
                                     temperature=1.0, mask_pads=False, inline=inline)
    fast_grads = gradients(model)
    model.zero_grad()
    assert seen == [slice(0, C), slice(C, 2 * C)]
    assert torch.equal(ppo["responses"], responses) and torch.equal(ppo["advantages"], advantages)
    assert (ppo["old_log_probs"] - old).abs().max() <= 1e-5
    fast, ref = floats(fast), floats(ref)
    assert fast[2]["actor/ppo_kl_ttt"] == [0.0] * len(fast[2]["actor/ppo_kl_ttt"])  # ratio exactly 1
    assert fast[0] == pytest.approx(ref[0], rel=1e-5) and fast[1] == pytest.approx(ref[1], rel=1e-4, abs=1e-6)
    for name, grad in ref_grads.items():
        rel = (fast_grads[name] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert rel <= 1e-4, f"{name}: relative gradient difference {rel:.2e}"


def test_checkpointed_segments_are_recomputed_in_the_backward():
    """With `checkpoint=True` each segment's activations are not kept: the backward re-runs every segment's
    forward (the gradients are those of the plain pass, `test_loss_and_every_gradient_equal_faithful`)."""
    model = build_model("delta_net")
    ids, mask = documents()
    labels = fast_ops.shifted_labels(ids, mask, mask_pads=False)
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(torch.is_grad_enabled()))
    try:
        for checkpoint in (False, True):
            calls.clear()
            _, loss_sum = fast_ops.run_document(model, ids[1], mask[1], POSITIONS[1].tolist(), shift_labels=labels[1],
                                                checkpoint=checkpoint)
            forwards = len(calls)
            loss_sum.backward()
            assert forwards == C + 1  # C segments up to the last cut, then the tail
            assert len(calls) - forwards == (C + 1 if checkpoint else 0)
    finally:
        handle.remove()
