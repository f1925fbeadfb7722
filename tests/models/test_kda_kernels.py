"""CPU KDA kernels (`chunk_kda`, `fused_recurrent_kda`) vs fla's own references (`fla.ops.kda.naive`:
`naive_recurrent_kda`, `naive_chunk_kda`; `fla.ops.kda.gate`: `naive_kda_gate`, `naive_kda_lowerbound_gate`):
outputs, final states, gradients (incl. the initial state and a loss through the final state), `cu_seqlens`, the
KDA layer's exact call (in-kernel gate and beta sigmoid, grouped value heads, value-first state), strong decays."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fla.ops.kda.gate import naive_kda_gate, naive_kda_lowerbound_gate
from fla.ops.kda.naive import naive_chunk_kda, naive_recurrent_kda

import refine.models  # noqa: F401  (installs the CPU kernels on this CUDA-less machine)
from refine.models import cpu_kernels as ck

TOL = 1e-5
NAMES = ["q", "k", "v", "g", "beta", "h0"]
KERNELS = {"chunk": ck.chunk_kda, "fused_recurrent": ck.fused_recurrent_kda}


def _l2(x):
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def _inputs(B, T, H, K, V, seed, HV=None, gate_shift=3.0, gate_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    HV = HV or H
    t = {
        "q": torch.randn(B, T, H, K, generator=gen),
        "k": torch.randn(B, T, H, K, generator=gen),
        "v": torch.randn(B, T, HV, V, generator=gen),
        "g": F.logsigmoid(torch.randn(B, T, HV, K, generator=gen) * gate_scale + gate_shift),
        "beta": torch.rand(B, T, HV, generator=gen),
        "h0": torch.randn(B, HV, K, V, generator=gen) * 0.5,
        "w_o": torch.randn(B, T, HV, V, generator=gen),
        "w_s": torch.randn(B, HV, K, V, generator=gen),
    }
    for name in NAMES:
        t[name].requires_grad_(True)
    return t


def _grads(o, s, t, leaves):
    return torch.autograd.grad((o * t["w_o"]).sum() + (s * t["w_s"]).sum(), leaves)


def _assert_close(a, b, what, tol=TOL):
    """Within `tol` absolute, or relative to the reference's largest magnitude when that exceeds 1."""
    err, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert err < tol * scale, f"{what}: max abs error {err:.3g} >= {tol} x {scale:.3g}"


def _reference(t, sl=slice(None), rows=slice(None), naive=naive_recurrent_kda):
    q, k, v, g, beta = (t[n][:, sl] for n in ("q", "k", "v", "g", "beta"))
    return naive(q=_l2(q), k=_l2(k), v=v, g=g, beta=beta, initial_state=t["h0"][rows], output_final_state=True)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("shape", [(2, 40, 2, 16, 8, 2), (1, 5, 1, 8, 16, 2)], ids=["chunked", "short-gva"])
def test_kda_matches_fla_naive(kernel, shape):
    B, T, H, K, V, HV = shape
    t = _inputs(B, T, H, K, V, seed=T + K, HV=HV)
    o, s = KERNELS[kernel](q=t["q"], k=t["k"], v=t["v"], g=t["g"], beta=t["beta"], initial_state=t["h0"],
                           output_final_state=True, use_qk_l2norm_in_kernel=True)
    ro, rs = _reference(t)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
    leaves = [t[n] for n in NAMES]
    for n, a, b in zip(NAMES, _grads(o, s, t, leaves), _grads(ro, rs, t, leaves)):
        _assert_close(a, b, f"d{n}")


def test_kda_chunk_matches_fla_naive_chunk_form():
    t = _inputs(1, 64, 2, 8, 8, seed=4)
    o, s = ck.chunk_kda(t["q"], t["k"], t["v"], t["g"], t["beta"], initial_state=t["h0"], output_final_state=True,
                        use_qk_l2norm_in_kernel=True)
    ro, rs = _reference(t, naive=naive_chunk_kda)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_kda_varlen_equals_per_sequence_reference(kernel):
    lengths, H, K, V = [37, 20, 5, 1], 2, 8, 8
    N = len(lengths)
    t = _inputs(1, sum(lengths), H, K, V, seed=21)
    t["h0"] = (torch.randn(N, H, K, V) * 0.5).requires_grad_(True)
    t["w_s"] = torch.randn(N, H, K, V)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    o, s = KERNELS[kernel](q=t["q"], k=t["k"], v=t["v"], g=t["g"], beta=t["beta"], initial_state=t["h0"],
                           output_final_state=True, use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
    parts = [_reference(t, slice(int(cu[n]), int(cu[n + 1])), slice(n, n + 1)) for n in range(N)]
    ro, rs = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 0)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final states")
    leaves = [t[n] for n in NAMES]
    for n, a, b in zip(NAMES, _grads(o, s, t, leaves), _grads(ro, rs, t, leaves)):
        _assert_close(a, b, f"d{n}")


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("lower_bound", [None, -5.0], ids=["softplus-gate", "lower-bound-gate"])
def test_kda_layer_call(kernel, lower_bound):
    """What the KDA layer passes: raw gate + A_log / dt_bias in the kernel, raw beta (sigmoid, x2 with
    allow_neg_eigval), q/k l2norm, HV = 2H, state [N, HV, V, K]."""
    B, T, H, HV, K, V = 2, 40, 1, 2, 8, 8
    t = _inputs(B, T, H, K, V, seed=7, HV=HV)
    g_raw = torch.randn(B, T, HV, K, requires_grad=True)
    beta_raw = torch.randn(B, T, HV, requires_grad=True)
    A_log = torch.log(torch.empty(HV).uniform_(1, 16)).requires_grad_(True)
    dt_bias = torch.randn(HV * K, requires_grad=True)
    h0_vk = t["h0"].detach().transpose(-1, -2).clone().requires_grad_(True)
    extra = dict(A_log=A_log, dt_bias=dt_bias)
    o, s_vk = KERNELS[kernel](q=t["q"], k=t["k"], v=t["v"], g=g_raw, beta=beta_raw, initial_state=h0_vk,
                              output_final_state=True, use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
                              use_beta_sigmoid_in_kernel=True, allow_neg_eigval=True, lower_bound=lower_bound,
                              state_v_first=True, **extra)
    assert s_vk.shape == (B, HV, V, K)
    if lower_bound is None:
        gate = naive_kda_gate(g_raw, A_log, dt_bias)
    else:
        gate = naive_kda_lowerbound_gate(g_raw, A_log, dt_bias, lower_bound=lower_bound)
    ro, rs = naive_recurrent_kda(q=_l2(t["q"]), k=_l2(t["k"]), v=t["v"], g=gate, beta=beta_raw.sigmoid() * 2,
                                 initial_state=h0_vk.transpose(-1, -2), output_final_state=True)
    _assert_close(o, ro, "o")
    _assert_close(s_vk.transpose(-1, -2), rs, "final state")
    leaves = [t["q"], t["k"], t["v"], g_raw, beta_raw, A_log, dt_bias, h0_vk]
    ours = _grads(o, s_vk.transpose(-1, -2), t, leaves)
    ref = _grads(ro, rs, t, leaves)
    for name, a, b in zip(["q", "k", "v", "g", "beta", "A_log", "dt_bias", "h0"], ours, ref):
        _assert_close(a, b, f"d{name}")


def test_kda_strong_per_key_decays_stay_finite_and_exact():
    """Per-key log decays down to about -30 per token (a factorised exp(G_i) * exp(-G_j) would overflow fp32)."""
    t = _inputs(1, 40, 1, 8, 8, seed=5, gate_shift=-6.0, gate_scale=10.0)
    assert t["g"].min() < -20
    o, s = ck.chunk_kda(t["q"], t["k"], t["v"], t["g"], t["beta"], initial_state=t["h0"], output_final_state=True,
                        use_qk_l2norm_in_kernel=True)
    ro, rs = _reference(t)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
    leaves = [t[n] for n in NAMES]
    for n, a, b in zip(NAMES, _grads(o, s, t, leaves), _grads(ro, rs, t, leaves)):
        assert torch.isfinite(a).all(), n
        _assert_close(a, b, f"d{n}")


def test_kda_bad_input_fails_early():
    t = _inputs(1, 8, 1, 8, 8, seed=1)
    with pytest.raises(ValueError, match="A_log"):
        ck.chunk_kda(t["q"], t["k"], t["v"], t["g"], t["beta"], use_gate_in_kernel=True)
    with pytest.raises(ValueError, match=r"g must have shape"):
        ck.fused_recurrent_kda(t["q"], t["k"], t["v"], t["g"][..., 0], t["beta"])
    with pytest.raises(ValueError, match="allow_neg_eigval"):
        ck.chunk_kda(t["q"], t["k"], t["v"], t["g"], t["beta"], allow_neg_eigval=True)
