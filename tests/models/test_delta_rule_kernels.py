"""CPU delta-rule kernels vs fla's own pure-torch references (`fla.ops.delta_rule.naive`,
`fla.ops.gated_delta_rule.naive`): forward, gradients (incl. the initial state and a loss through the final
state), with and without `cu_seqlens`, several shapes (T not a multiple of the chunk size)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import refine.models  # noqa: F401  (installs the CPU kernels on this CUDA-less machine)
from refine.models import cpu_kernels as ck

TOL = 1e-5


def _l2(x):  # fla's in-kernel l2norm, written out independently
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def _inputs(B, T, H, K, V, seed, HV=None, gated=False):
    g = torch.Generator().manual_seed(seed)
    HV = HV or H
    t = {
        "q": torch.randn(B, T, H, K, generator=g),
        "k": torch.randn(B, T, H, K, generator=g),
        "v": torch.randn(B, T, HV, V, generator=g),
        "beta": torch.rand(B, T, HV, generator=g),
        "h0": torch.randn(B, HV, K, V, generator=g) * 0.5,
        "w_o": torch.randn(B, T, HV, V, generator=g),
        "w_s": torch.randn(B, HV, K, V, generator=g),
    }
    if gated:
        t["g"] = F.logsigmoid(torch.randn(B, T, HV, generator=g) + 2.0)
    for name in ("q", "k", "v", "beta", "h0", "g"):
        if name in t:
            t[name].requires_grad_(True)
    return t


def _grads(o, s, t, names):
    loss = (o * t["w_o"]).sum() + (s * t["w_s"]).sum()
    return torch.autograd.grad(loss, [t[n] for n in names])


def _assert_close(a, b, what):
    err = (a - b).abs().max().item()
    assert err < TOL, f"{what}: max abs error {err:.3g} >= {TOL}"


def _delta_reference(t, sl=slice(None), h0_rows=slice(None)):
    """fla's head-first `delta_rule_recurrence` on l2-normalised q/k, back in [B,T,H,D] layout."""
    from fla.ops.delta_rule.naive import delta_rule_recurrence

    q, k, v, beta = (t[n][:, sl].transpose(1, 2) for n in ("q", "k", "v", "beta"))
    o, s = delta_rule_recurrence(_l2(q), _l2(k), v, beta, initial_state=t["h0"][h0_rows], output_final_state=True)
    return o.transpose(1, 2), s


DELTA_SHAPES = [  # B, T, H, K, V
    (2, 100, 2, 16, 8),
    (1, 64, 1, 8, 16),
    (3, 7, 2, 16, 16),
]


@pytest.mark.parametrize("kernel", ["chunk", "recurrent", "fused_recurrent"])
@pytest.mark.parametrize("shape", DELTA_SHAPES)
def test_delta_rule_matches_fla_naive(kernel, shape):
    B, T, H, K, V = shape
    t = _inputs(B, T, H, K, V, seed=T + K)
    fn = {"chunk": ck.chunk_delta_rule, "recurrent": ck.recurrent_delta_rule,
          "fused_recurrent": ck.fused_recurrent_delta_rule}[kernel]
    o, s = fn(t["q"], t["k"], t["v"], t["beta"], initial_state=t["h0"], output_final_state=True,
              use_qk_l2norm_in_kernel=True)
    ro, rs = _delta_reference(t)
    assert o.dtype == torch.float32 and s.dtype == torch.float32  # fp32 is accepted (fla's chunk op refuses it)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
    names = ["q", "k", "v", "beta", "h0"]
    for n, a, b in zip(names, _grads(o, s, t, names), _grads(ro, rs, t, names)):
        _assert_close(a, b, f"d{n}")


def test_delta_rule_chunk_size_16_and_no_initial_state():
    t = _inputs(2, 45, 2, 8, 8, seed=3)
    o, s = ck.chunk_delta_rule(t["q"], t["k"], t["v"], t["beta"], output_final_state=True,
                               use_qk_l2norm_in_kernel=True, chunk_size=16)
    from fla.ops.delta_rule.naive import delta_rule_recurrence

    q, k, v, beta = (t[n].transpose(1, 2) for n in ("q", "k", "v", "beta"))
    ro, rs = delta_rule_recurrence(_l2(q), _l2(k), v, beta, output_final_state=True)
    _assert_close(o, ro.transpose(1, 2), "o")
    _assert_close(s, rs, "final state")


def test_recurrent_delta_rule_per_channel_beta():
    t = _inputs(1, 6, 2, 8, 4, seed=5)
    beta = torch.rand(1, 6, 2, 4, requires_grad=True)
    o, s = ck.fused_recurrent_delta_rule(t["q"], t["k"], t["v"], beta, initial_state=t["h0"],
                                         output_final_state=True, use_qk_l2norm_in_kernel=True)
    from fla.ops.delta_rule.naive import delta_rule_recurrence

    q, k, v = (t[n].transpose(1, 2) for n in ("q", "k", "v"))
    ro, rs = delta_rule_recurrence(_l2(q), _l2(k), v, beta.transpose(1, 2), initial_state=t["h0"])
    _assert_close(o, ro.transpose(1, 2), "o")
    _assert_close(s, rs, "final state")


CU_LENGTHS = [37, 70, 5, 1]  # > 64, not multiples of the chunk size, a single token


@pytest.mark.parametrize("kernel", ["chunk", "fused_recurrent", "recurrent"])
def test_delta_rule_varlen_equals_per_sequence_reference(kernel):
    N, H, K, V = len(CU_LENGTHS), 2, 16, 8
    total = sum(CU_LENGTHS)
    t = _inputs(1, total, H, K, V, seed=11)
    t["h0"] = torch.randn(N, H, K, V).requires_grad_(True)
    t["w_s"] = torch.randn(N, H, K, V)
    cu = torch.tensor([0, *torch.tensor(CU_LENGTHS).cumsum(0).tolist()])
    fn = {"chunk": ck.chunk_delta_rule, "recurrent": ck.recurrent_delta_rule,
          "fused_recurrent": ck.fused_recurrent_delta_rule}[kernel]
    o, s = fn(t["q"], t["k"], t["v"], t["beta"], initial_state=t["h0"], output_final_state=True,
              use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
    parts = [_delta_reference(t, slice(int(cu[n]), int(cu[n + 1])), slice(n, n + 1)) for n in range(N)]
    ro = torch.cat([p[0] for p in parts], dim=1)
    rs = torch.cat([p[1] for p in parts], dim=0)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final states")
    names = ["q", "k", "v", "beta", "h0"]
    for n, a, b in zip(names, _grads(o, s, t, names), _grads(ro, rs, t, names)):
        _assert_close(a, b, f"d{n}")


def test_delta_rule_bf16_in_bf16_out_fp32_state():
    t = _inputs(1, 20, 1, 8, 8, seed=2)
    q, k, v, beta = (t[n].detach().bfloat16() for n in ("q", "k", "v", "beta"))
    o, s = ck.chunk_delta_rule(q, k, v, beta, output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32


def test_delta_rule_bad_input_fails_early():
    t = _inputs(2, 8, 1, 8, 8, seed=1)
    with pytest.raises(ValueError, match="batch size is expected to be 1"):
        ck.chunk_delta_rule(t["q"], t["k"], t["v"], t["beta"], cu_seqlens=torch.tensor([0, 4, 8]))
    with pytest.raises(ValueError, match="chunk_size"):
        ck.chunk_delta_rule(t["q"], t["k"], t["v"], t["beta"], chunk_size=48)


def _autograd_nodes(tensor) -> int:
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


@pytest.mark.parametrize("gated", [False, True])
def test_chunk_kernel_work_grows_with_chunks_not_tokens(gated):
    """A 2K-token sequence is 32 chunk steps: the autograd graph (one set of nodes per Python-level step) stays
    far smaller than one node per token, unlike the token-by-token recurrence."""
    T = 2048
    t = _inputs(1, T, 1, 8, 8, seed=0, gated=True)
    if gated:
        o, s = ck.chunk_gated_delta_rule(t["q"], t["k"], t["v"], t["g"], t["beta"], output_final_state=True)
    else:
        o, s = ck.chunk_delta_rule(t["q"], t["k"], t["v"], t["beta"], output_final_state=True)
    chunk_nodes = _autograd_nodes(s)
    assert chunk_nodes < 30 * (T // 64), chunk_nodes  # ~20 nodes per 64-token chunk step
    o_rec, s_rec = ck.recurrent_delta_rule(t["q"][:, :256], t["k"][:, :256], t["v"][:, :256], t["beta"][:, :256],
                                           output_final_state=True)
    assert _autograd_nodes(s_rec) > 4 * 256  # the recurrence really is several nodes per token
