"""CPU GLA kernels (`chunk_gla`, `fused_recurrent_gla`; GLA and HGRN2 call them) vs fla's own token-by-token
reference `fla.ops.gla.naive.naive_recurrent_gla`: outputs, final states and gradients (q, k, v, gates, the initial
state, and a loss through the final state), the value-first state the layers use, `cu_seqlens`, strong decays."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fla.ops.gla.naive import naive_recurrent_gla

import refine.models  # noqa: F401  (installs the CPU kernels on this CUDA-less machine)
from refine.models import cpu_kernels as ck

TOL = 1e-5
NAMES = ["q", "k", "v", "g", "h0"]


def _inputs(B, T, H, K, V, seed, gate_shift=2.0, gate_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    t = {
        "q": torch.randn(B, T, H, K, generator=gen),
        "k": torch.randn(B, T, H, K, generator=gen),
        "v": torch.randn(B, T, H, V, generator=gen),
        "g": F.logsigmoid(torch.randn(B, T, H, K, generator=gen) * gate_scale + gate_shift),
        "h0": torch.randn(B, H, K, V, generator=gen) * 0.5,
        "w_o": torch.randn(B, T, H, V, generator=gen),
        "w_s": torch.randn(B, H, K, V, generator=gen),
    }
    for name in NAMES:
        t[name].requires_grad_(True)
    return t


def _grads(o, s, t):
    loss = (o * t["w_o"]).sum() + (s * t["w_s"]).sum()
    return torch.autograd.grad(loss, [t[n] for n in NAMES])


def _assert_close(a, b, what, tol=TOL):
    """Within `tol` absolute, or `tol` relative to the reference's largest magnitude when that exceeds 1 (fp32
    sums of ~100 terms of size ~10, e.g. key gradients under retention's slow decays, round at ~1e-5)."""
    err, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert err < tol * scale, f"{what}: max abs error {err:.3g} >= {tol} x {scale:.3g}"


def _reference(t, sl=slice(None), rows=slice(None)):
    q, k, v, g = (t[n][:, sl] for n in ("q", "k", "v", "g"))
    return naive_recurrent_gla(q, k, v, g, initial_state=t["h0"][rows], output_final_state=True)


KERNELS = {"chunk": lambda **a: ck.chunk_gla(g=a.pop("gk"), **a), "fused_recurrent": ck.fused_recurrent_gla}


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("shape", [(2, 70, 2, 16, 8), (1, 32, 1, 8, 16), (2, 5, 2, 8, 8)])
def test_gla_matches_fla_naive(kernel, shape):
    B, T, H, K, V = shape
    t = _inputs(B, T, H, K, V, seed=T + K)
    o, s = KERNELS[kernel](q=t["q"], k=t["k"], v=t["v"], gk=t["g"], initial_state=t["h0"], output_final_state=True)
    ro, rs = _reference(t)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
    for n, a, b in zip(NAMES, _grads(o, s, t), _grads(ro, rs, t)):
        _assert_close(a, b, f"d{n}")


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_gla_layer_call_value_first_state(kernel):
    """GLA / HGRN2 pass `state_v_first=True`: the state is [N, H, V, K] in and out."""
    t = _inputs(2, 40, 2, 8, 4, seed=3)
    h0_vk = t["h0"].detach().transpose(-1, -2).clone().requires_grad_(True)
    o, s_vk = KERNELS[kernel](q=t["q"], k=t["k"], v=t["v"], gk=t["g"], initial_state=h0_vk,
                              output_final_state=True, state_v_first=True)
    assert s_vk.shape == (2, 2, 4, 8)
    ro, rs = naive_recurrent_gla(t["q"], t["k"], t["v"], t["g"], initial_state=h0_vk.transpose(-1, -2),
                                 output_final_state=True)
    _assert_close(o, ro, "o")
    _assert_close(s_vk.transpose(-1, -2), rs, "final state")
    ours = torch.autograd.grad((o * t["w_o"]).sum() + (s_vk.transpose(-1, -2) * t["w_s"]).sum(), h0_vk)
    ref = torch.autograd.grad((ro * t["w_o"]).sum() + (rs * t["w_s"]).sum(), h0_vk)
    _assert_close(ours[0], ref[0], "dh0 (value-first)")


@pytest.mark.parametrize("lengths", [[37, 20, 5, 1], [5, 1, 9]], ids=["long", "short-token-loop"])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_gla_varlen_equals_per_sequence_reference(kernel, lengths):
    N, H, K, V = len(lengths), 2, 8, 8
    t = _inputs(1, sum(lengths), H, K, V, seed=21)
    t["h0"] = (torch.randn(N, H, K, V) * 0.5).requires_grad_(True)
    t["w_s"] = torch.randn(N, H, K, V)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    o, s = KERNELS[kernel](q=t["q"], k=t["k"], v=t["v"], gk=t["g"], initial_state=t["h0"], output_final_state=True,
                           cu_seqlens=cu)
    parts = [_reference(t, slice(int(cu[n]), int(cu[n + 1])), slice(n, n + 1)) for n in range(N)]
    ro, rs = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 0)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final states")
    for n, a, b in zip(NAMES, _grads(o, s, t), _grads(ro, rs, t)):
        _assert_close(a, b, f"d{n}")


def test_gla_strong_decays_stay_finite_and_exact():
    """Log decays down to about -30 per token: a chunk form that factors exp(G_i) * exp(-G_j) would overflow
    (sum over 16 tokens ~ -300); the segment sums keep every factor <= 1."""
    t = _inputs(1, 48, 1, 8, 8, seed=5, gate_shift=-6.0, gate_scale=10.0)
    assert t["g"].min() < -20
    o, s = ck.chunk_gla(t["q"], t["k"], t["v"], t["g"], initial_state=t["h0"], output_final_state=True)
    ro, rs = _reference(t)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
    for n, a, b in zip(NAMES, _grads(o, s, t), _grads(ro, rs, t)):
        assert torch.isfinite(a).all(), n
        _assert_close(a, b, f"d{n}")


def test_gla_bad_input_fails_early():
    t = _inputs(2, 8, 1, 8, 8, seed=1)
    with pytest.raises(ValueError, match="batch size is expected to be 1"):
        ck.chunk_gla(t["q"], t["k"], t["v"], t["g"], cu_seqlens=torch.tensor([0, 4, 8]))
    with pytest.raises(ValueError, match="same shape"):
        ck.chunk_gla(t["q"], t["k"], t["v"], t["g"][..., 0])
    with pytest.raises(NotImplementedError, match="gv"):
        ck.fused_recurrent_gla(t["q"], t["k"], t["v"], gk=t["g"], gv=t["v"])
