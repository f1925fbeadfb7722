"""Tiny models of the recurrent fla families whose ops have CPU stand-ins (GLA, HGRN2, RetNet, KDA, Comba, Gated
DeltaProduct, RWKV-7), built from the family table's tiny config: forward + backward on the stand-ins equals the same
model with the layer's ops replaced by fla's own naive references (logits and every parameter gradient), and a full
forward equals token-by-token cached decoding (the stand-ins' recurrent form, another code path than the chunk
form)."""

from __future__ import annotations

import importlib

import pytest
import torch
from fla.ops.comba.naive import naive_chunk_comba
from fla.ops.gated_delta_product.naive import naive_recurrent_gated_delta_product
from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence
from fla.ops.gla.naive import naive_recurrent_gla
from fla.ops.kda.gate import naive_kda_gate
from fla.ops.kda.naive import naive_recurrent_kda
from fla.ops.simple_gla.naive import naive_recurrent_simple_gla
from transformers import AutoModelForCausalLM

import refine.models  # noqa: F401  (installs the CPU kernels on this CUDA-less machine)
from refine.models.tiny import tiny_config

TOL = 1e-4  # logits / gradients after two fp32 blocks; the kernels themselves are checked at 1e-5


def _value_first(op):
    """Wrap a key-first naive reference `op(q, k, v, gate, h0) -> (o, S)` in the layer's calling convention."""
    def call(q, k, v, g=None, gk=None, initial_state=None, output_final_state=False, state_v_first=False,
             cu_seqlens=None, **_):
        assert cu_seqlens is None, "the model checks here run unpadded batches"
        h0 = initial_state.transpose(-1, -2) if state_v_first and initial_state is not None else initial_state
        o, S = op(q, k, v, g if g is not None else gk, h0)
        S = S.transpose(-1, -2) if state_v_first else S
        return o, (S if output_final_state else None)
    return call


naive_gla = _value_first(lambda q, k, v, gate, h0: naive_recurrent_gla(q, k, v, gate, h0, output_final_state=True))


def _retention_gate(q):
    H = q.shape[2]
    return torch.tensor([1 - 2.0 ** (-5 - h) for h in range(H)]).log().expand(q.shape[:3])


naive_retention = _value_first(lambda q, k, v, _, h0: naive_recurrent_simple_gla(
    q, k, v, _retention_gate(q), initial_state=h0, output_final_state=True))

def _l2(x):
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def naive_kda(q, k, v, g, beta, A_log=None, dt_bias=None, initial_state=None, output_final_state=False,
              use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, use_beta_sigmoid_in_kernel=False,
              allow_neg_eigval=False, state_v_first=False, cu_seqlens=None, **kwargs):
    """The KDA layer's call (in-kernel gate and beta sigmoid, l2norm, value-first state) on fla's naive KDA."""
    assert cu_seqlens is None and kwargs.get("lower_bound") is None
    A_log, dt_bias = kwargs.get("A_log", A_log), kwargs.get("dt_bias", dt_bias)
    g = naive_kda_gate(g, A_log, dt_bias) if use_gate_in_kernel else g
    beta = beta.float().sigmoid() * (2 if allow_neg_eigval else 1) if use_beta_sigmoid_in_kernel else beta
    q, k = (_l2(q), _l2(k)) if use_qk_l2norm_in_kernel else (q, k)
    h0 = initial_state.transpose(-1, -2) if state_v_first and initial_state is not None else initial_state
    o, S = naive_recurrent_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    return o, ((S.transpose(-1, -2) if state_v_first else S) if output_final_state else None)


def naive_comba(q, k, v, p, g, beta, initial_state=None, output_final_state=False, cu_seqlens=None,
                use_qk_l2norm_in_kernel=False, **_):
    assert cu_seqlens is None and use_qk_l2norm_in_kernel
    o, S = naive_chunk_comba(_l2(q), _l2(k), v, _l2(p), g, beta, chunk_size=16, initial_state=initial_state,
                             output_final_state=True)
    return o, (S if output_final_state else None)


def naive_delta_product(q, k, v, g, beta, num_householder, initial_state=None, output_final_state=False,
                        cu_seqlens=None, use_qk_l2norm_in_kernel=False, **_):
    assert cu_seqlens is None and use_qk_l2norm_in_kernel
    o, S = naive_recurrent_gated_delta_product(_l2(q), _l2(k), v, g, beta, scale=q.shape[-1] ** -0.5,
                                               initial_state=initial_state, num_householder=num_householder)
    return o, (S if output_final_state else None)


def naive_rwkv7(r, w, k, v, a=None, b=None, kk=None, scale=1.0, initial_state=None, output_final_state=False,
                cu_seqlens=None, **_):
    """RWKV-7's chunk call (a, b given) or decoding call (kk and the gate `a`: a = -kk, b = kk * a) on fla's
    head-first DPLR recurrence, which scales queries by K^-0.5 (undone here)."""
    assert cu_seqlens is None
    if kk is not None:
        a, b = -kk, kk * a
    r, w, k, v, a, b = (x.transpose(1, 2) for x in (r, w, k, v, a, b))
    o, S = dplr_recurrence(r * scale * r.shape[-1] ** 0.5, k, v, a, b, w, initial_state=initial_state)
    return o.transpose(1, 2), (S if output_final_state else None)


# (fla layer module, op names bound there, the naive reference standing in for them)
NAIVE_OPS = {
    "gla": ("fla.layers.gla", ("chunk_gla", "fused_recurrent_gla"), naive_gla),
    "hgrn2": ("fla.layers.hgrn2", ("chunk_gla", "fused_recurrent_gla"), naive_gla),
    "retnet": ("fla.layers.multiscale_retention", ("chunk_retention", "fused_recurrent_retention"), naive_retention),
    "kda": ("fla.layers.kda", ("chunk_kda", "fused_recurrent_kda"), naive_kda),
    "comba": ("fla.layers.comba", ("chunk_comba", "fused_recurrent_comba"), naive_comba),
    "gated_deltaproduct": ("fla.layers.gated_deltaproduct", ("chunk_gated_delta_product",), naive_delta_product),
    "rwkv7": ("fla.layers.rwkv7", ("chunk_rwkv7", "fused_mul_recurrent_rwkv7"), naive_rwkv7),
}


@pytest.fixture(scope="module", params=sorted(NAIVE_OPS))
def family_model(request):
    torch.manual_seed(0)
    return request.param, AutoModelForCausalLM.from_config(tiny_config(request.param))


def _max_err(a, b):
    return (a - b).abs().max().item()


def _forward_backward(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("T", [80, 20], ids=["chunk-path", "short"])
def test_stand_ins_equal_fla_naive_ops_forward_and_backward(family_model, monkeypatch, T):
    family, model = family_model
    ids = torch.randint(3, 512, (2, T), generator=torch.Generator().manual_seed(T))
    logits, grads = _forward_backward(model, ids)
    assert all(torch.isfinite(g).all() for g in grads.values())
    module, names, naive = NAIVE_OPS[family]
    layer_module = importlib.import_module(module)
    for name in names:
        monkeypatch.setattr(layer_module, name, naive)
    ref_logits, ref_grads = _forward_backward(model, ids)
    assert _max_err(logits, ref_logits) < TOL
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert _max_err(g, ref_grads[name]) < TOL * max(1.0, ref_grads[name].abs().max().item()), name


def test_token_by_token_decoding_equals_full_forward(family_model):
    _, model = family_model
    ids = torch.randint(3, 512, (2, 72), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        out = model(input_ids=ids[:, :66], use_cache=True)
        logits, cache = [out.logits], out.past_key_values
        for t in range(66, 72):
            out = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.past_key_values
    assert _max_err(torch.cat(logits, 1), full) < TOL
