"""CPU stand-ins for fla's rotary embedding (RetNet, fla's attention layer), `swish` / `sigmoid` / `sqrelu` (GLA's
output gate, HGRN2's queries, RWKV-7's channel mix) and `rms_norm_linear` (HGRN2's output) vs independent
references: fla's pure-torch `rotary_embedding_ref` and torch's own silu / sigmoid / relu / rms_norm / linear.
Values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fla.modules.rotary.ops import rotary_embedding_ref

import refine.models  # noqa: F401  (installs the CPU kernels on this CUDA-less machine)
from refine.models import cpu_kernels as ck

TOL = 1e-5


def _assert_close(a, b, what, tol=TOL):
    err = (a - b).abs().max().item()
    assert err < tol, f"{what}: max abs error {err:.3g} >= {tol}"


def _tables(TR, R, seed=0):
    gen = torch.Generator().manual_seed(seed)
    freqs = torch.outer(torch.arange(TR, dtype=torch.float), torch.rand(R, generator=gen))
    return freqs.cos(), freqs.sin()


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize(("R", "offset"), [(8, 0), (4, 5)], ids=["full-rotary", "partial-rotary-offset"])
def test_rotary_matches_fla_reference(interleaved, R, offset):
    B, T, H, D = 2, 12, 3, 16
    cos, sin = _tables(T + offset, R)
    x = torch.randn(B, T, H, D, requires_grad=True)
    y = ck.rotary_embedding(x, cos, sin, interleaved=interleaved, seqlen_offsets=offset)
    ref = rotary_embedding_ref(x, cos[offset:offset + T], sin[offset:offset + T], interleaved=interleaved)
    _assert_close(y, ref, "y")
    w = torch.randn_like(ref)
    _assert_close(torch.autograd.grad((y * w).sum(), x)[0], torch.autograd.grad((ref * w).sum(), x)[0], "dx")


def test_rotary_per_sequence_offsets_and_cu_seqlens():
    """Packed sequences restart at position 0 (plus their own offset); a negative position (a left-padded row in
    decoding) gives zeros in the rotated channels, as fla's kernel."""
    H, D, R = 2, 12, 4
    lengths, offsets = [3, 5, 2], torch.tensor([0, 4, -1])
    cos, sin = _tables(16, R, seed=1)
    x = torch.randn(1, sum(lengths), H, D)
    cu = torch.tensor([0, 3, 8, 10])
    y = ck.rotary_embedding(x, cos, sin, seqlen_offsets=offsets, cu_seqlens=cu)
    for n, (bos, eos) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        off = int(offsets[n])
        for t in range(eos - bos):
            pos = t + off
            if pos < 0:
                _assert_close(y[0, bos + t, :, :2 * R], torch.zeros(H, 2 * R), "negative position")
                _assert_close(y[0, bos + t, :, 2 * R:], x[0, bos + t, :, 2 * R:], "pass-through")
                continue
            ref = rotary_embedding_ref(x[:, bos + t:bos + t + 1], cos[pos:pos + 1], sin[pos:pos + 1])
            _assert_close(y[0, bos + t], ref[0, 0], f"seq {n} token {t}")
    batched = ck.rotary_embedding(x.view(1, 10, H, D)[:, :3].expand(2, 3, H, D), cos, sin,
                                  seqlen_offsets=torch.tensor([0, 2]))
    _assert_close(batched[1], rotary_embedding_ref(x[:, :3], cos[2:5], sin[2:5])[0], "per-row offset")


@pytest.mark.parametrize(("fwd", "bwd", "torch_fn"), [("swish_fwd", "swish_bwd", F.silu),
                                                      ("sigmoid_fwd", "sigmoid_bwd", torch.sigmoid),
                                                      ("sqrelu_fwd", "sqrelu_bwd", lambda x: F.relu(x) ** 2)])
def test_pointwise_forward_and_backward_halves(fwd, bwd, torch_fn):
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True) * 4
    dy = torch.randn(4, 7, dtype=torch.float64)
    _assert_close(getattr(ck, fwd)(x), torch_fn(x), "y", tol=1e-12)
    expected = torch.autograd.grad((torch_fn(x) * dy).sum(), x)[0]
    # fla's halves take (x, dy), except sqrelu's (dy, x)
    got = getattr(ck, bwd)(dy, x.detach()) if fwd == "sqrelu_fwd" else getattr(ck, bwd)(x.detach(), dy)
    _assert_close(got, expected, "dx", tol=1e-12)


def test_fla_swish_runs_on_the_stand_in_halves():
    """`fla.modules.activations.swish` (what GLA's `ACT2FN['swish']` and HGRN2 call) differentiates on CPU once the
    family table's patches are installed."""
    from fla.modules.activations import ACT2FN, swish

    assert ACT2FN["swish"] is swish
    x = torch.randn(3, 5, requires_grad=True)
    y = swish(x)
    _assert_close(y, F.silu(x), "y")
    _assert_close(torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(F.silu(x).sum(), x)[0], "dx")


@pytest.mark.parametrize("prenorm", [False, True])
def test_rms_norm_linear_matches_torch(prenorm):
    x, res = torch.randn(2, 5, 8, requires_grad=True), torch.randn(2, 5, 8)
    nw, lw, lb = torch.rand(8) + 0.5, torch.randn(6, 8), torch.randn(6)
    out = ck.rms_norm_linear(x, nw, None, lw, lb, residual=res, eps=1e-5, prenorm=prenorm)
    ref = F.linear(F.rms_norm(x + res, (8,), nw, eps=1e-5), lw, lb)
    if prenorm:
        out, residual_out = out
        _assert_close(residual_out, x + res, "residual out")
    _assert_close(out, ref, "out")
    _assert_close(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0], "dx")
