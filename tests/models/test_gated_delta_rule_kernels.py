"""CPU gated-delta-rule kernels vs `fla.ops.gated_delta_rule.naive` (+ `naive_gdn_gate`), forward and gradients,
with and without `cu_seqlens`, including GatedDeltaNet's call (in-kernel gate, beta sigmoid, v-first state, GVA)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fla.ops.gated_delta_rule.gate import naive_gdn_gate
from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule, naive_recurrent_gated_delta_rule

import refine.models  # noqa: F401
from refine.models import cpu_kernels as ck

TOL = 1e-5


def _l2(x):
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def _inputs(B, T, H, K, V, seed, HV=None):
    gen = torch.Generator().manual_seed(seed)
    HV = HV or H
    t = {
        "q": torch.randn(B, T, H, K, generator=gen),
        "k": torch.randn(B, T, H, K, generator=gen),
        "v": torch.randn(B, T, HV, V, generator=gen),
        "beta": torch.rand(B, T, HV, generator=gen),
        "g": F.logsigmoid(torch.randn(B, T, HV, generator=gen) + 2.0),
        "h0": torch.randn(B, HV, K, V, generator=gen) * 0.5,
        "w_o": torch.randn(B, T, HV, V, generator=gen),
        "w_s": torch.randn(B, HV, K, V, generator=gen),
    }
    for name in ("q", "k", "v", "beta", "g", "h0"):
        t[name].requires_grad_(True)
    return t


def _grads(o, s, t, names):
    loss = (o * t["w_o"]).sum() + (s * t["w_s"]).sum()
    return torch.autograd.grad(loss, [t[n] for n in names])


def _assert_close(a, b, what):
    err = (a - b).abs().max().item()
    assert err < TOL, f"{what}: max abs error {err:.3g} >= {TOL}"


def _reference(t, sl=slice(None), rows=slice(None), naive=naive_recurrent_gated_delta_rule):
    q, k, v, beta, g = (t[n][:, sl] for n in ("q", "k", "v", "beta", "g"))
    return naive(q=_l2(q), k=_l2(k), v=v, beta=beta, g=g, initial_state=t["h0"][rows], output_final_state=True)


NAMES = ["q", "k", "v", "beta", "g", "h0"]


@pytest.mark.parametrize("kernel", ["chunk", "fused_recurrent"])
@pytest.mark.parametrize("shape", [(2, 100, 2, 16, 8), (1, 64, 1, 8, 16), (2, 5, 2, 16, 16)])
def test_gated_delta_rule_matches_fla_naive(kernel, shape):
    B, T, H, K, V = shape
    t = _inputs(B, T, H, K, V, seed=T + V)
    fn = ck.chunk_gated_delta_rule if kernel == "chunk" else ck.fused_recurrent_gated_delta_rule
    o, s = fn(q=t["q"], k=t["k"], v=t["v"], g=t["g"], beta=t["beta"], initial_state=t["h0"],
              output_final_state=True, use_qk_l2norm_in_kernel=True)
    ro, rs = _reference(t)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
    for n, a, b in zip(NAMES, _grads(o, s, t, NAMES), _grads(ro, rs, t, NAMES)):
        _assert_close(a, b, f"d{n}")


def test_gated_chunk_matches_fla_naive_chunk_form():
    t = _inputs(1, 90, 2, 16, 8, seed=4)
    o, s = ck.chunk_gated_delta_rule(q=t["q"], k=t["k"], v=t["v"], g=t["g"], beta=t["beta"],
                                     initial_state=t["h0"], output_final_state=True, use_qk_l2norm_in_kernel=True)
    ro, rs = _reference(t, naive=naive_chunk_gated_delta_rule)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")


@pytest.mark.parametrize("lengths", [[37, 70, 5, 1], [5, 1, 9]], ids=["long", "short-token-loop"])
@pytest.mark.parametrize("kernel", ["chunk", "fused_recurrent"])
def test_gated_delta_rule_varlen_equals_per_sequence_reference(kernel, lengths):
    N, H, K, V = len(lengths), 2, 16, 8
    t = _inputs(1, sum(lengths), H, K, V, seed=21)
    t["h0"] = (torch.randn(N, H, K, V) * 0.5).requires_grad_(True)
    t["w_s"] = torch.randn(N, H, K, V)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    fn = ck.chunk_gated_delta_rule if kernel == "chunk" else ck.fused_recurrent_gated_delta_rule
    o, s = fn(q=t["q"], k=t["k"], v=t["v"], g=t["g"], beta=t["beta"], initial_state=t["h0"],
              output_final_state=True, use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
    parts = [_reference(t, slice(int(cu[n]), int(cu[n + 1])), slice(n, n + 1)) for n in range(N)]
    ro, rs = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 0)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final states")
    for n, a, b in zip(NAMES, _grads(o, s, t, NAMES), _grads(ro, rs, t, NAMES)):
        _assert_close(a, b, f"d{n}")


@pytest.mark.parametrize("kernel", ["chunk", "fused_recurrent"])
@pytest.mark.parametrize("allow_neg_eigval", [False, True])
def test_gated_deltanet_layer_call(kernel, allow_neg_eigval):
    """The exact argument set GatedDeltaNet passes: raw gate + A_log/dt_bias, raw beta, v-first state, HV = 2H."""
    B, T, H, HV, K, V = 2, 70, 1, 2, 8, 8
    t = _inputs(B, T, H, K, V, seed=7, HV=HV)
    g_raw = torch.randn(B, T, HV, requires_grad=True)
    beta_raw = torch.randn(B, T, HV, requires_grad=True)
    A_log = torch.log(torch.empty(HV).uniform_(1, 16)).requires_grad_(True)
    dt_bias = torch.randn(HV, requires_grad=True)
    h0_vk = t["h0"].detach().transpose(-1, -2).clone().requires_grad_(True)  # [N, HV, V, K]
    fn = ck.chunk_gated_delta_rule if kernel == "chunk" else ck.fused_recurrent_gated_delta_rule
    o, s_vk = fn(q=t["q"], k=t["k"], v=t["v"], g=g_raw, beta=beta_raw, initial_state=h0_vk, output_final_state=True,
                 use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
                 use_beta_sigmoid_in_kernel=True, allow_neg_eigval=allow_neg_eigval, state_v_first=True)
    assert s_vk.shape == (B, HV, V, K)

    gate = naive_gdn_gate(g_raw, A_log, dt_bias)
    beta = beta_raw.sigmoid() * (2.0 if allow_neg_eigval else 1.0)
    q, k = (_l2(t[n]).repeat_interleave(HV // H, dim=2) for n in ("q", "k"))
    ro, rs = naive_recurrent_gated_delta_rule(q=q, k=k, v=t["v"], beta=beta, g=gate,
                                              initial_state=h0_vk.transpose(-1, -2), output_final_state=True)
    _assert_close(o, ro, "o")
    _assert_close(s_vk.transpose(-1, -2), rs, "final state")
    leaves = [t["q"], t["k"], t["v"], g_raw, beta_raw, A_log, dt_bias, h0_vk]
    ours = torch.autograd.grad((o * t["w_o"]).sum() + (s_vk.transpose(-1, -2) * t["w_s"]).sum(), leaves)
    ref = torch.autograd.grad((ro * t["w_o"]).sum() + (rs * t["w_s"]).sum(), leaves)
    for name, a, b in zip(["q", "k", "v", "g", "beta", "A_log", "dt_bias", "h0"], ours, ref):
        _assert_close(a, b, f"d{name}")


def test_gated_delta_rule_bad_input_fails_early():
    t = _inputs(1, 8, 1, 8, 8, seed=1)
    with pytest.raises(ValueError, match="allow_neg_eigval"):
        ck.chunk_gated_delta_rule(t["q"], t["k"], t["v"], t["g"], t["beta"], allow_neg_eigval=True)
    with pytest.raises(ValueError, match="A_log"):
        ck.fused_recurrent_gated_delta_rule(t["q"], t["k"], t["v"], g=t["g"], beta=t["beta"], use_gate_in_kernel=True)
    with pytest.raises(ValueError, match="initial states"):
        ck.chunk_gated_delta_rule(t["q"], t["k"], t["v"], t["g"], t["beta"], initial_state=t["h0"],
                                  cu_seqlens=torch.tensor([0, 3, 8]))


def test_explicit_scale_and_no_l2norm():
    t = _inputs(1, 20, 2, 8, 8, seed=13)
    k = _l2(t["k"]).detach()  # already normalised keys, as a caller without in-kernel l2norm passes them
    o, s = ck.chunk_gated_delta_rule(t["q"], k, t["v"], t["g"], t["beta"], scale=0.3, initial_state=t["h0"],
                                     output_final_state=True)
    ro, rs = naive_recurrent_gated_delta_rule(t["q"], k, t["v"], t["beta"], t["g"], scale=0.3,
                                              initial_state=t["h0"], output_final_state=True)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
