"""CPU Gated DeltaProduct kernel (`chunk_gated_delta_product`) vs fla's own reference
`fla.ops.gated_delta_product.naive.naive_recurrent_gated_delta_product` (n Householder steps per token): outputs,
final states, gradients (incl. the initial state and through the final state), with and without the forget gate,
`cu_seqlens` (fla's reference splits them itself)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fla.ops.gated_delta_product.naive import naive_recurrent_gated_delta_product

import refine.models  # noqa: F401  (installs the CPU kernels on this CUDA-less machine)
from refine.models import cpu_kernels as ck

TOL = 1e-5


def _l2(x):
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def _inputs(B, T, H, K, V, n, seed, gated=True):
    gen = torch.Generator().manual_seed(seed)
    t = {
        "q": torch.randn(B, T, H, K, generator=gen),
        "k": torch.randn(B, T * n, H, K, generator=gen),
        "v": torch.randn(B, T * n, H, V, generator=gen),
        "beta": torch.rand(B, T * n, H, generator=gen) * 2,  # allow_neg_eigval's range
        "g": F.logsigmoid(torch.randn(B, T, H, generator=gen) + 2.0) if gated else None,
        "h0": torch.randn(B, H, K, V, generator=gen) * 0.5,
        "w_o": torch.randn(B, T, H, V, generator=gen),
        "w_s": torch.randn(B, H, K, V, generator=gen),
    }
    names = ["q", "k", "v", "beta", "h0"] + (["g"] if gated else [])
    for name in names:
        t[name].requires_grad_(True)
    return t, names


def _grads(o, s, t, names):
    return torch.autograd.grad((o * t["w_o"]).sum() + (s * t["w_s"]).sum(), [t[n] for n in names])


def _assert_close(a, b, what, tol=TOL):
    """Within `tol` absolute, or relative to the reference's largest magnitude when that exceeds 1."""
    err, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert err < tol * scale, f"{what}: max abs error {err:.3g} >= {tol} x {scale:.3g}"


def _reference(t, n, cu=None):
    return naive_recurrent_gated_delta_product(
        _l2(t["q"]), _l2(t["k"]), t["v"], t["g"], t["beta"], scale=t["q"].shape[-1] ** -0.5, cu_seqlens=cu,
        initial_state=t["h0"], output_final_state=True, num_householder=n)


@pytest.mark.parametrize(("n", "gated", "T"), [(2, True, 40), (3, False, 7), (1, True, 70)])
def test_gated_delta_product_matches_fla_naive(n, gated, T):
    t, names = _inputs(2, T, 2, 8, 8, n, seed=T + n, gated=gated)
    o, s = ck.chunk_gated_delta_product(t["q"], t["k"], t["v"], t["g"], t["beta"], num_householder=n,
                                        initial_state=t["h0"], output_final_state=True,
                                        use_qk_l2norm_in_kernel=True)
    ro, rs = _reference(t, n)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
    for name, a, b in zip(names, _grads(o, s, t, names), _grads(ro, rs, t, names)):
        _assert_close(a, b, f"d{name}")


def test_gated_delta_product_varlen():
    n, lengths, H = 2, [21, 9, 1], 2
    N = len(lengths)
    t, names = _inputs(1, sum(lengths), H, 8, 8, n, seed=5)
    t["h0"] = (torch.randn(N, H, 8, 8) * 0.5).requires_grad_(True)
    t["w_s"] = torch.randn(N, H, 8, 8)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    o, s = ck.chunk_gated_delta_product(t["q"], t["k"], t["v"], t["g"], t["beta"], num_householder=n,
                                        initial_state=t["h0"], output_final_state=True,
                                        use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
    ro, rs = _reference(t, n, cu)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final states")
    for name, a, b in zip(names, _grads(o, s, t, names), _grads(ro, rs, t, names)):
        _assert_close(a, b, f"d{name}")
