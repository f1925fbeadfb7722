"""CPU simple-GLA and retention kernels (RetNet) vs fla's own references: `naive_recurrent_simple_gla` /
`naive_chunk_simple_gla` (token loop / chunk form with a state) and `naive_retention` (RetNet's parallel formula,
no state). Outputs, final states, gradients (incl. the initial state and a loss through the final state),
`cu_seqlens`, and the per-head decays retention uses, written out here from the RetNet paper's gamma_h."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fla.ops.retention.naive import naive_retention
from fla.ops.simple_gla.naive import naive_chunk_simple_gla, naive_recurrent_simple_gla

import refine.models  # noqa: F401  (installs the CPU kernels on this CUDA-less machine)
from refine.models import cpu_kernels as ck

TOL = 1e-5


def _inputs(B, T, H, K, V, seed):
    gen = torch.Generator().manual_seed(seed)
    t = {
        "q": torch.randn(B, T, H, K, generator=gen),
        "k": torch.randn(B, T, H, K, generator=gen),
        "v": torch.randn(B, T, H, V, generator=gen),
        "g": F.logsigmoid(torch.randn(B, T, H, generator=gen) + 2.0),
        "h0": torch.randn(B, H, K, V, generator=gen) * 0.5,
        "w_o": torch.randn(B, T, H, V, generator=gen),
        "w_s": torch.randn(B, H, K, V, generator=gen),
    }
    for name in ("q", "k", "v", "g", "h0"):
        t[name].requires_grad_(True)
    return t


def _grads(o, s, t, names):
    loss = (o * t["w_o"]).sum() + (0 if s is None else (s * t["w_s"]).sum())
    return torch.autograd.grad(loss, [t[n] for n in names])


def _assert_close(a, b, what, tol=TOL):
    """Within `tol` absolute, or `tol` relative to the reference's largest magnitude when that exceeds 1 (fp32
    sums of ~100 terms of size ~10, e.g. key gradients under retention's slow decays, round at ~1e-5)."""
    err, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert err < tol * scale, f"{what}: max abs error {err:.3g} >= {tol} x {scale:.3g}"


def _gamma_log(H):  # RetNet: gamma_h = 1 - 2^(-5 - h), written independently of the kernels
    return torch.tensor([float(torch.log(torch.tensor(1 - 2.0 ** (-5 - h), dtype=torch.float64))) for h in range(H)])


SIMPLE = {"chunk": ck.chunk_simple_gla, "fused_recurrent": ck.fused_recurrent_simple_gla}


@pytest.mark.parametrize("kernel", sorted(SIMPLE))
@pytest.mark.parametrize("shape", [(2, 70, 2, 16, 8), (2, 5, 2, 8, 8)])
def test_simple_gla_matches_fla_naive(kernel, shape):
    B, T, H, K, V = shape
    t = _inputs(B, T, H, K, V, seed=T)
    o, s = SIMPLE[kernel](t["q"], t["k"], t["v"], g=t["g"], initial_state=t["h0"], output_final_state=True)
    ro, rs = naive_recurrent_simple_gla(t["q"], t["k"], t["v"], t["g"], initial_state=t["h0"],
                                        output_final_state=True)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
    names = ["q", "k", "v", "g", "h0"]
    for n, a, b in zip(names, _grads(o, s, t, names), _grads(ro, rs, t, names)):
        _assert_close(a, b, f"d{n}")


def test_simple_gla_chunk_matches_fla_naive_chunk_form_with_g_gamma():
    t = _inputs(1, 90, 3, 8, 8, seed=4)
    g_gamma = _gamma_log(3)
    o, s = ck.chunk_simple_gla(t["q"], t["k"], t["v"], g_gamma=g_gamma, scale=0.3, initial_state=t["h0"],
                               output_final_state=True)
    g = g_gamma.expand(1, 90, 3)
    ro, rs = naive_chunk_simple_gla(t["q"], t["k"], t["v"], g, initial_state=t["h0"], output_final_state=True,
                                    scale=0.3)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")


RETENTION = {"chunk": ck.chunk_retention, "fused_chunk": ck.fused_chunk_retention,
             "fused_recurrent": ck.fused_recurrent_retention}


@pytest.mark.parametrize("kernel", [*sorted(RETENTION), "parallel"])
def test_retention_without_state_matches_fla_naive_retention(kernel):
    """fla's `naive_retention` is RetNet's parallel form (head-first, no state): outputs and q/k/v gradients."""
    t = _inputs(2, 70, 4, 8, 8, seed=7)
    if kernel == "parallel":
        o, s = ck.parallel_retention(t["q"], t["k"], t["v"])
        assert s is None
    else:
        o, s = RETENTION[kernel](t["q"], t["k"], t["v"])
    ro = naive_retention(*(t[n].transpose(1, 2) for n in ("q", "k", "v"))).transpose(1, 2)
    _assert_close(o, ro, "o")
    names = ["q", "k", "v"]
    for n, a, b in zip(names, _grads(o, None, t, names), _grads(ro, None, t, names)):
        _assert_close(a, b, f"d{n}")


@pytest.mark.parametrize("kernel", sorted(RETENTION))
@pytest.mark.parametrize("T", [70, 6])
def test_retention_with_state_matches_token_loop_with_gamma(kernel, T):
    """With an initial / final state: fla's simple-GLA token loop at RetNet's gamma_h."""
    B, H = 2, 3
    t = _inputs(B, T, H, 8, 16, seed=T + 1)
    o, s = RETENTION[kernel](t["q"], t["k"], t["v"], initial_state=t["h0"], output_final_state=True)
    g = _gamma_log(H).expand(B, T, H)
    ro, rs = naive_recurrent_simple_gla(t["q"], t["k"], t["v"], g, initial_state=t["h0"], output_final_state=True)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
    names = ["q", "k", "v", "h0"]
    for n, a, b in zip(names, _grads(o, s, t, names), _grads(ro, rs, t, names)):
        _assert_close(a, b, f"d{n}")


@pytest.mark.parametrize("kernel", ["chunk", "fused_recurrent"])
def test_retention_varlen_equals_per_sequence_reference(kernel):
    lengths, H = [37, 70, 5, 1], 2
    N = len(lengths)
    t = _inputs(1, sum(lengths), H, 8, 8, seed=21)
    t["h0"] = (torch.randn(N, H, 8, 8) * 0.5).requires_grad_(True)
    t["w_s"] = torch.randn(N, H, 8, 8)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    o, s = RETENTION[kernel](t["q"], t["k"], t["v"], initial_state=t["h0"], output_final_state=True, cu_seqlens=cu)
    parts = []
    for n in range(N):
        sl = slice(int(cu[n]), int(cu[n + 1]))
        g = _gamma_log(H).expand(1, lengths[n], H)
        parts.append(naive_recurrent_simple_gla(t["q"][:, sl], t["k"][:, sl], t["v"][:, sl], g,
                                                initial_state=t["h0"][n:n + 1], output_final_state=True))
    ro, rs = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 0)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final states")
    names = ["q", "k", "v", "h0"]
    for n, a, b in zip(names, _grads(o, s, t, names), _grads(ro, rs, t, names)):
        _assert_close(a, b, f"d{n}")
