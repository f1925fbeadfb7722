"""`refine.models.cpu_kernels.mamba2` against independent references: fla's own `Mamba2.torch_forward` (prefill,
padded prefill, one-token decoding; its SiLU as torch's) and the Mamba2 recurrence written step by step (outputs,
final state and every gradient, including the initial state's, from a non-zero state)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refine.models import fla_models
from refine.models.cpu_kernels import mamba2 as kernel

TOL = 1e-5


def build_mixer(n_groups: int):
    from fla.layers.mamba2 import Mamba2

    torch.manual_seed(0)
    layer = Mamba2(num_heads=8, head_dim=16, hidden_size=64, state_size=16, expand=2, n_groups=n_groups,
                   conv_kernel=4, chunk_size=8, layer_idx=0).float()
    with torch.no_grad():  # fla zero-initialises nothing here, but make every parameter matter
        layer.out_proj.weight.normal_(0, 0.2)
        layer.norm.weight.normal_(1, 0.2)
        layer.D.normal_()
    layer.act = torch.nn.SiLU()  # fla's SiLU is a Triton kernel; the reference path needs torch's
    return layer


@pytest.fixture(scope="module")
def mixer():
    """One B/C group: fla's torch prefill maps heads to groups as its decoding step and mamba-ssm do only then
    (with several groups it tiles them, `B.repeat`, where the step repeats each group, `expand`)."""
    return build_mixer(1)


def fla_torch_forward(layer, *args):
    return fla_models._originals[("fla.layers.mamba2", "Mamba2.torch_forward")](layer, *args)


@pytest.mark.parametrize("padded", [False, True])
def test_prefill_equals_fla_torch_path(mixer, padded):
    h = torch.randn(2, 21, 64, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 21, dtype=torch.long)
    if padded:
        mask[0, :6] = 0
        h = h * mask[..., None]  # fla's forward zeroes pads before torch_forward
    am = mask if padded else None
    ref = fla_torch_forward(mixer, h, None, True, am)
    mine = kernel.mamba2_forward(mixer, h, None, True, am)
    for name, a, b in zip(("output", "conv_state", "ssm_state"), mine, ref):
        assert (a - b).abs().max() <= TOL * max(1.0, b.abs().max()), name


def test_one_token_decoding_equals_fla_torch_path(mixer):
    h = torch.randn(2, 13, 64, generator=torch.Generator().manual_seed(2))
    _, conv, ssm = fla_torch_forward(mixer, h, None, True, None)
    step = torch.randn(2, 1, 64, generator=torch.Generator().manual_seed(3))
    ref = fla_torch_forward(mixer, step, {"conv_state": conv.clone(), "recurrent_state": ssm.clone()}, True, None)
    mine = kernel.mamba2_forward(mixer, step, {"conv_state": conv, "recurrent_state": ssm}, True, None)
    for a, b in zip(mine, ref):
        assert (a - b).abs().max() <= TOL * max(1.0, b.abs().max())


def test_prefill_with_groups_equals_fla_decoding_steps():
    """Two B/C groups: the prefill equals fla's own one-token step (the head -> group map of mamba-ssm) run token
    by token from a zero state."""
    layer = build_mixer(2)
    h = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(6))
    mine = kernel.mamba2_forward(layer, h, None, True, None)
    state = {"conv_state": torch.zeros(2, layer.conv_dim, layer.conv_kernel_size),
             "recurrent_state": torch.zeros(2, layer.num_heads, layer.head_dim, layer.ssm_state_size)}
    outs = []
    for t in range(h.shape[1]):
        out, conv, ssm = fla_torch_forward(layer, h[:, t:t + 1], state, True, None)
        state = {"conv_state": conv, "recurrent_state": ssm}
        outs.append(out)
    assert (torch.cat(outs, 1) - mine[0]).abs().max() <= TOL * max(1.0, mine[0].abs().max())
    assert (state["recurrent_state"] - mine[2]).abs().max() <= TOL


def test_segments_continue_exactly_where_the_whole_sequence_is(mixer):
    h = torch.randn(1, 30, 64, generator=torch.Generator().manual_seed(4))
    whole = kernel.mamba2_forward(mixer, h, None, True, None)
    first = kernel.mamba2_forward(mixer, h[:, :11], None, True, None)
    second = kernel.mamba2_forward(mixer, h[:, 11:], {"conv_state": first[1], "recurrent_state": first[2]}, True,
                                   None)
    assert (torch.cat([first[0], second[0]], 1) - whole[0]).abs().max() <= TOL
    assert (second[1] - whole[1]).abs().max() <= TOL and (second[2] - whole[2]).abs().max() <= TOL


def stepwise(x, dt, log_decay, b, c, state):
    """h_t = exp(a_t) h_{t-1} + dt_t x_t b_t^T, y_t = h_t c_t, one token at a time."""
    ys = []
    for t in range(x.shape[1]):
        state = (state * log_decay[:, t].exp()[..., None, None]
                 + dt[:, t][..., None, None] * x[:, t][..., None] * b[:, t][:, :, None, :])
        ys.append(torch.einsum("nhpk,nhk->nhp", state, c[:, t]))
    return torch.stack(ys, 1), state


def test_chunked_scan_equals_the_recurrence_with_gradients():
    gen = torch.Generator().manual_seed(5)
    n, t, h, p, s = 2, 19, 3, 4, 5
    x, b, c = (torch.randn(n, t, h, d, generator=gen, dtype=torch.float64) for d in (p, s, s))
    dt = F.softplus(torch.randn(n, t, h, generator=gen, dtype=torch.float64))
    log_decay = -dt * torch.rand(h, generator=gen, dtype=torch.float64)
    state = torch.randn(n, h, p, s, generator=gen, dtype=torch.float64)
    inputs = [v.requires_grad_() for v in (x, dt, log_decay, b, c, state)]
    weights = [torch.randn(n, t, h, p, generator=gen, dtype=torch.float64),
               torch.randn(n, h, p, s, generator=gen, dtype=torch.float64)]

    def grads(fn):
        y, final = fn(*inputs)
        loss = (y * weights[0]).sum() + (final * weights[1]).sum()
        return (y.detach(), final.detach(), *torch.autograd.grad(loss, inputs))

    mine = grads(lambda *v: kernel._chunk_scan(*v, chunk=8))
    ref = grads(stepwise)
    names = ("y", "final state", "dx", "ddt", "dlog_decay", "db", "dc", "dinitial_state")
    for name, a, r in zip(names, mine, ref):
        assert (a - r).abs().max() <= 1e-9 * max(1.0, r.abs().max()), name
