"""CPU Comba kernels (`chunk_comba`, `fused_recurrent_comba`) vs fla's `naive_chunk_comba` and a token-by-token
recurrence written out here (read with p before the decay, as fla's Triton kernels do: fla's own
`naive_recurrent_comba` decays first and disagrees with both). Outputs, final states, gradients (incl. the initial
state and through the final state), `cu_seqlens`, the Comba layer's call (q/k/p l2norm in the kernel)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fla.ops.comba.naive import naive_chunk_comba

import refine.models  # noqa: F401  (installs the CPU kernels on this CUDA-less machine)
from refine.models import cpu_kernels as ck

TOL = 1e-5
NAMES = ["q", "k", "v", "p", "g", "beta", "h0"]


def _l2(x):
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def _inputs(B, T, H, K, V, seed, HV=None):
    gen = torch.Generator().manual_seed(seed)
    HV = HV or H
    t = {
        "q": torch.randn(B, T, H, K, generator=gen),
        "k": torch.randn(B, T, H, K, generator=gen),
        "p": torch.randn(B, T, H, K, generator=gen),
        "v": torch.randn(B, T, HV, V, generator=gen),
        "g": F.logsigmoid(torch.randn(B, T, HV, generator=gen) + 2.0),
        "beta": torch.rand(B, T, HV, generator=gen),
        "h0": torch.randn(B, HV, K, V, generator=gen) * 0.5,
        "w_o": torch.randn(B, T, HV, V, generator=gen),
        "w_s": torch.randn(B, HV, K, V, generator=gen),
    }
    for name in NAMES:
        t[name].requires_grad_(True)
    return t


def _comba_steps(q, k, v, p, g, beta, h0):
    """Comba token by token ([B, T, H, D], q/k/p already normalised; value heads HV = G * H read head h // G)."""
    G = v.shape[2] // q.shape[2]
    q, k, p = (x.repeat_interleave(G, dim=2) for x in (q, k, p))
    S, outs = h0, []
    for t in range(q.shape[1]):
        read = torch.einsum("bhk,bhkv->bhv", p[:, t], S)  # the state before this token's decay
        u = beta[:, t, :, None] * (v[:, t] - read)
        S = S * g[:, t].exp()[..., None, None] + k[:, t, :, :, None] * u[:, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * q.shape[-1] ** -0.5, S))
    return torch.stack(outs, 1), S


def _grads(o, s, t):
    return torch.autograd.grad((o * t["w_o"]).sum() + (s * t["w_s"]).sum(), [t[n] for n in NAMES])


def _assert_close(a, b, what, tol=TOL):
    """Within `tol` absolute, or relative to the reference's largest magnitude when that exceeds 1."""
    err, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert err < tol * scale, f"{what}: max abs error {err:.3g} >= {tol} x {scale:.3g}"


def _run(kernel, t, **kw):
    if kernel == "chunk":
        return ck.chunk_comba(q=t["q"], k=t["k"], v=t["v"], p=t["p"], g=t["g"], beta=t["beta"],
                              initial_state=t["h0"], output_final_state=True, use_qk_l2norm_in_kernel=True, **kw)
    return ck.fused_recurrent_comba(t["q"], t["k"], t["p"], t["v"], t["g"], t["beta"], initial_state=t["h0"],
                                    output_final_state=True, use_qk_l2norm_in_kernel=True, **kw)


def _reference(t, sl=slice(None), rows=slice(None)):
    q, k, p, v, g, beta = (t[n][:, sl] for n in ("q", "k", "p", "v", "g", "beta"))
    return _comba_steps(_l2(q), _l2(k), v, _l2(p), g, beta, t["h0"][rows])


@pytest.mark.parametrize("kernel", ["chunk", "fused_recurrent"])
@pytest.mark.parametrize("shape", [(2, 70, 2, 16, 8, 2), (1, 6, 1, 8, 16, 2)], ids=["chunked", "short-gva"])
def test_comba_matches_the_recurrence(kernel, shape):
    B, T, H, K, V, HV = shape
    t = _inputs(B, T, H, K, V, seed=T + K, HV=HV)
    o, s = _run(kernel, t)
    ro, rs = _reference(t)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
    for n, a, b in zip(NAMES, _grads(o, s, t), _grads(ro, rs, t)):
        _assert_close(a, b, f"d{n}")


@pytest.mark.parametrize("kernel", ["chunk", "fused_recurrent"])
def test_comba_matches_fla_naive_chunk_comba(kernel):
    t = _inputs(1, 50, 2, 8, 8, seed=3)
    o, s = _run(kernel, t)
    ro, rs = naive_chunk_comba(_l2(t["q"]), _l2(t["k"]), t["v"], _l2(t["p"]), t["g"], t["beta"], chunk_size=16,
                               initial_state=t["h0"], output_final_state=True)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
    for n, a, b in zip(NAMES, _grads(o, s, t), _grads(ro, rs, t)):
        _assert_close(a, b, f"d{n}")


@pytest.mark.parametrize("kernel", ["chunk", "fused_recurrent"])
def test_comba_varlen_equals_per_sequence_reference(kernel):
    lengths, H = [37, 20, 5, 1], 2
    N = len(lengths)
    t = _inputs(1, sum(lengths), H, 8, 8, seed=21)
    t["h0"] = (torch.randn(N, H, 8, 8) * 0.5).requires_grad_(True)
    t["w_s"] = torch.randn(N, H, 8, 8)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    o, s = _run(kernel, t, cu_seqlens=cu)
    parts = [_reference(t, slice(int(cu[n]), int(cu[n + 1])), slice(n, n + 1)) for n in range(N)]
    ro, rs = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 0)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final states")
    for n, a, b in zip(NAMES, _grads(o, s, t), _grads(ro, rs, t)):
        _assert_close(a, b, f"d{n}")


def test_comba_without_p_reads_with_k():
    t = _inputs(1, 20, 1, 8, 8, seed=9)
    o, s = ck.chunk_comba(t["q"], t["k"], t["v"], None, t["g"], t["beta"], initial_state=t["h0"],
                          output_final_state=True, use_qk_l2norm_in_kernel=True)
    ro, rs = _comba_steps(_l2(t["q"]), _l2(t["k"]), t["v"], _l2(t["k"]), t["g"], t["beta"], t["h0"])
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
