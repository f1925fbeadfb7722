"""Tiny fla DeltaNet / GatedDeltaNet on the CPU kernels: padding, cached decoding, generate, hidden states.

fla switches kernels at q_len 64 (DeltaNet: fused_recurrent <= 64 < chunk; GatedDeltaNet: chunk whenever grad
is enabled, else fused_recurrent <= 64), so the padding and decoding checks run on both sides of 64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import refine.models  # noqa: F401
from refine.models.tiny import tiny_config, tiny_deltanet_config

EOS = 2
TOL = 1e-4  # logits after two fp32 blocks; the kernels themselves are checked at 1e-5
CONFIGS = {"delta_net": tiny_deltanet_config, "gated_deltanet": lambda **kw: tiny_config("gated_deltanet", **kw)}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(CONFIGS[request.param]()).eval()
    assert type(m).__name__ == {"delta_net": "DeltaNetForCausalLM", "gated_deltanet": "GatedDeltaNetForCausalLM"}[
        request.param
    ]
    return m


def _left_padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), EOS, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = r
        mask[i, T - len(r):] = 1
    return ids, mask


def _rows(lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 512, (n,), generator=gen) for n in lengths]


def _max_err(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("lengths", [(20, 13, 6), (80, 67, 40)], ids=["T<=64", "T>64"])
def test_left_padded_batch_equals_each_row_alone(model, lengths):
    rows = _rows(lengths, seed=sum(lengths))
    ids, mask = _left_padded(rows)
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask, use_cache=True)
        for i, row in enumerate(rows):
            alone = model(input_ids=row[None], use_cache=True)
            n = len(row)
            assert _max_err(batch.logits[i, -n:], alone.logits[0]) < TOL
            # pads never enter the state: the recurrent state after the padded row equals the row alone
            for layer in range(model.config.num_hidden_layers):
                s_batch = batch.past_key_values[layer]["recurrent_state"][i]
                s_alone = alone.past_key_values[layer]["recurrent_state"][0]
                assert _max_err(s_batch, s_alone) < TOL


def test_left_padded_batch_with_grad_equals_each_row_alone(model):
    """Grad enabled: GatedDeltaNet takes the chunk kernel even for short inputs; gradients stay finite."""
    rows = _rows((20, 9), seed=5)
    ids, mask = _left_padded(rows)
    model.train()
    try:
        batch = model(input_ids=ids, attention_mask=mask)
        for i, row in enumerate(rows):
            alone = model(input_ids=row[None])
            assert _max_err(batch.logits[i, -len(row):], alone.logits[0]) < TOL
        batch.logits[mask.bool()].logsumexp(-1).sum().backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.parametrize("prompt_len", [10, 70], ids=["prefill<=64", "prefill>64"])
def test_cached_token_by_token_decoding_equals_full_forward(model, prompt_len):
    steps = 6
    ids = torch.stack(_rows((prompt_len + steps,) * 2, seed=prompt_len))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        out = model(input_ids=ids[:, :prompt_len], use_cache=True)
        logits = [out.logits]
        cache = out.past_key_values
        for t in range(prompt_len, prompt_len + steps):
            out = model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits.append(out.logits)
    assert _max_err(torch.cat(logits, 1), full) < TOL


def test_generate_returns_exactly_k_new_tokens_and_padding_does_not_change_greedy_output(model):
    k = 5
    rows = _rows((9, 4), seed=3)
    ids, mask = _left_padded(rows)
    torch.manual_seed(0)
    sampled = model.generate(input_ids=ids, attention_mask=mask, min_new_tokens=k, max_new_tokens=k, do_sample=True,
                             pad_token_id=EOS, eos_token_id=EOS)
    assert sampled.shape == (2, ids.shape[1] + k)
    assert torch.equal(sampled[:, : ids.shape[1]], ids)
    greedy = model.generate(input_ids=ids, attention_mask=mask, min_new_tokens=k, max_new_tokens=k, do_sample=False,
                            pad_token_id=EOS, eos_token_id=EOS)
    for i, row in enumerate(rows):
        alone = model.generate(input_ids=row[None], min_new_tokens=k, max_new_tokens=k, do_sample=False,
                               pad_token_id=EOS, eos_token_id=EOS)
        assert torch.equal(greedy[i, -k:], alone[0, -k:])


def test_output_hidden_states_ends_with_the_final_norm_output(model):
    ids = torch.stack(_rows((12, 12), seed=8))
    captured = {}
    hook = model.model.layers[-1].register_forward_hook(lambda mod, args, out: captured.update(h=out[0]))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
    finally:
        hook.remove()
    cfg = model.config
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    expected = F.rms_norm(captured["h"], (cfg.hidden_size,), model.model.norm.weight, cfg.norm_eps)
    assert _max_err(out.hidden_states[-1], expected) < 1e-5
    assert _max_err(model.lm_head(out.hidden_states[-1]), out.logits) < 1e-5


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("delta_net", {"use_gate": True}), ("gated_deltanet", {"num_v_heads": 4, "allow_neg_eigval": True})],
    ids=["deltanet-gated-output", "gdn-grouped-values"],
)
def test_fused_norm_and_swiglu_configs_match_unfused(name, overrides):
    """fla's fused RMSNorm (residual + prenorm) and SwiGLU-linear paths, which real checkpoints enable, give the
    same logits as the unfused torch modules with the same weights."""
    torch.manual_seed(1)
    unfused = AutoModelForCausalLM.from_config(CONFIGS[name](**overrides)).eval()
    fused = AutoModelForCausalLM.from_config(CONFIGS[name](fuse_norm=True, fuse_swiglu=True, **overrides)).eval()
    fused.load_state_dict(unfused.state_dict())
    ids = torch.stack(_rows((30, 30), seed=9))
    with torch.no_grad():
        assert _max_err(fused(input_ids=ids).logits, unfused(input_ids=ids).logits) < 1e-5


def test_packed_sequences_with_cu_seqlens_equal_each_row_alone(model):
    """The varlen path (one packed row + `cu_seqlens`, as padding-free training uses) keeps sequences apart."""
    rows = _rows((30, 70, 1), seed=12)
    cu = torch.tensor([0, 30, 100, 101])
    with torch.no_grad():
        packed = model(input_ids=torch.cat(rows)[None], cu_seqlens=cu).logits
        for i, row in enumerate(rows):
            alone = model(input_ids=row[None]).logits
            assert _max_err(packed[0, cu[i] : cu[i + 1]], alone[0]) < TOL
