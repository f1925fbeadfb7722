"""CPU short convolution vs an explicit per-timestep reference (and `F.conv1d`), its decoding cache, and the
norm / swiglu stand-ins vs their formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fla.modules import FusedRMSNormGated, RMSNorm, ShortConvolution

import refine.models  # noqa: F401
from refine.models import cpu_kernels as ck

TOL = 1e-5


def _reference_conv(x, weight, bias, initial_state, activation=True):
    """y_t = silu(sum_j w[:, j] * x_{t-(W-1)+j} + b), reading the cache (slot W + index) before t = 0."""
    B, T, D = x.shape
    W = weight.shape[1]
    cache = torch.zeros(B, D, W) if initial_state is None else initial_state
    rows = []
    for t in range(T):
        acc = torch.zeros(B, D) if bias is None else bias.expand(B, D).clone()
        for j in range(W):
            s = t - (W - 1) + j
            acc = acc + weight[:, j] * (x[:, s] if s >= 0 else cache[:, :, W + s])
        rows.append(F.silu(acc) if activation else acc)
    full = torch.cat([cache, x.transpose(1, 2)], dim=-1)
    return torch.stack(rows, 1), full[..., -W:]


def test_conv_without_state_matches_torch_conv1d():
    x, weight, bias = torch.randn(2, 9, 6), torch.randn(6, 4), torch.randn(6)
    y, _ = ck.causal_conv1d(x, weight, bias, activation=None)
    ref = F.conv1d(x.transpose(1, 2), weight.unsqueeze(1), bias, padding=3, groups=6)[..., :9].transpose(1, 2)
    assert (y - ref).abs().max() < TOL


@pytest.mark.parametrize("T", [2, 9])  # shorter and longer than the kernel width
def test_conv_with_initial_state_matches_reference_forward_and_grads(T):
    B, D, W = 2, 6, 4
    x = torch.randn(B, T, D, requires_grad=True)
    weight, bias = torch.randn(D, W, requires_grad=True), torch.randn(D, requires_grad=True)
    h0 = torch.randn(B, D, W, requires_grad=True)
    residual = torch.randn(B, T, D)
    y, state = ck.causal_conv1d(x, weight, bias, residual=residual, initial_state=h0, output_final_state=True,
                                activation="silu")
    ry, rstate = _reference_conv(x, weight, bias, h0)
    ry = ry + residual
    assert (y - ry).abs().max() < TOL and (state - rstate).abs().max() < TOL
    w_y, w_s = torch.randn_like(y), torch.randn_like(state)
    leaves = [x, weight, bias, h0]
    ours = torch.autograd.grad((y * w_y).sum() + (state * w_s).sum(), leaves)
    ref = torch.autograd.grad((ry * w_y).sum() + (rstate * w_s).sum(), leaves)
    for name, a, b in zip(["x", "weight", "bias", "h0"], ours, ref):
        assert (a - b).abs().max() < TOL, name


def test_conv_varlen_equals_per_sequence_calls():
    lengths, D, W = [5, 1, 11, 3], 6, 4
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    x = torch.randn(1, sum(lengths), D)
    weight, h0 = torch.randn(D, W), torch.randn(len(lengths), D, W)
    y, state = ck.causal_conv1d(x, weight, initial_state=h0, output_final_state=True, activation="silu",
                                cu_seqlens=cu)
    for n in range(len(lengths)):
        a, b = int(cu[n]), int(cu[n + 1])
        ry, rs = _reference_conv(x[:, a:b], weight, None, h0[n : n + 1])
        assert (y[:, a:b] - ry).abs().max() < TOL and (state[n] - rs[0]).abs().max() < TOL


def test_short_convolution_step_by_step_cache_equals_full_forward():
    torch.manual_seed(0)
    conv = ShortConvolution(hidden_size=6, kernel_size=4, bias=True, activation="silu")
    x = torch.randn(2, 7, 6)
    with torch.no_grad():
        y_full, state_full = conv(x, output_final_state=True)
        y_prefix, cache = conv(x[:, :3], output_final_state=True)  # multi-token call returns a fresh cache
        ys = [y_prefix]
        for t in range(3, 7):
            y_t, returned = conv(x[:, t : t + 1], cache=cache, output_final_state=True)
            assert returned is cache  # one token per sequence without grad: fla's in-place step
            ys.append(y_t)
    assert (torch.cat(ys, 1) - y_full).abs().max() < TOL
    assert (cache - state_full).abs().max() < TOL


def test_rms_norms_match_formulas():
    x, res, g = torch.randn(3, 5, 8), torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
    h = x + res
    ref = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    y, residual_out = norm(x, res, prenorm=True)
    assert (y - ref).abs().max() < TOL and torch.equal(residual_out, h)
    assert (norm(x) - F.rms_norm(x, (8,), norm.weight, 1e-5)).abs().max() < TOL
    gated = FusedRMSNormGated(8, eps=1e-5)
    assert (gated(x, g) - F.rms_norm(x, (8,), None, 1e-5) * F.silu(g)).abs().max() < TOL
    gated_sigmoid = FusedRMSNormGated(8, eps=1e-5, activation="sigmoid")
    assert (gated_sigmoid(x, g) - F.rms_norm(x, (8,), None, 1e-5) * torch.sigmoid(g)).abs().max() < TOL


def test_swiglu_and_l2norm_match_formulas():
    from fla.modules import mlp

    x, y = torch.randn(4, 6), torch.randn(4, 6)
    assert (mlp.swiglu(x, y) - x * torch.sigmoid(x) * y).abs().max() < TOL
    assert (ck.l2norm(x) - x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)).abs().max() < TOL
