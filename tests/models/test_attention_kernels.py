"""`refine.models.cpu_kernels.attention` (flash-attn's two functions on PyTorch's scaled-dot-product attention)
against the naive formula softmax(q k^T / sqrt(D) + mask) v written out here: outputs and gradients, causal with
cached keys first (T_q < T_k), grouped key/value heads, a sliding window, packed variable-length sequences."""

from __future__ import annotations

import math

import pytest
import torch

from refine.models.cpu_kernels.attention import flash_attn_func, flash_attn_varlen_func


def naive(q, k, v, *, causal, window=None):
    """[B, T, H, D] attention by the formula, float64; query i sits at key position i + T_k - T_q."""
    groups = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(groups, 2), v.repeat_interleave(groups, 2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    t_q, t_k = q.shape[1], k.shape[1]
    qpos = torch.arange(t_q)[:, None] + t_k - t_q
    kpos = torch.arange(t_k)[None, :]
    allowed = torch.ones(t_q, t_k, dtype=torch.bool)
    if causal:
        allowed &= kpos <= qpos
    if window is not None:
        allowed &= kpos >= qpos - window
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def inputs(b, t_q, t_k, h, h_kv, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, n, d, generator=gen, dtype=torch.float64, requires_grad=True)
            for t, n in ((t_q, h), (t_k, h_kv), (t_k, h_kv))]


def assert_same_with_grads(mine_fn, ref_fn, tensors):
    out = mine_fn(*tensors)
    ref = ref_fn(*tensors)
    weight = torch.randn_like(ref)
    grads = torch.autograd.grad((out * weight).sum(), tensors)
    ref_grads = torch.autograd.grad((ref * weight).sum(), tensors)
    assert (out - ref).abs().max() <= 1e-5  # the stand-in computes in fp32, as flash-attn does inside
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max() <= 1e-5


@pytest.mark.parametrize("t_q,t_k,h,h_kv,window", [(7, 7, 4, 4, None), (3, 11, 4, 2, None), (1, 9, 2, 1, None),
                                                   (9, 9, 2, 2, 3)])
def test_fixed_length_equals_the_formula(t_q, t_k, h, h_kv, window):
    tensors = inputs(2, t_q, t_k, h, h_kv)
    size = (-1, -1) if window is None else (window, 0)
    assert_same_with_grads(lambda q, k, v: flash_attn_func(q, k, v, causal=True, window_size=size),
                           lambda q, k, v: naive(q, k, v, causal=True, window=window), tensors)


def test_varlen_equals_each_sequence_by_the_formula():
    lengths_q, lengths_k = [3, 1, 5], [6, 4, 5]  # cached keys first where T_k > T_q
    q, k, v = (torch.cat(parts) for parts in zip(*(
        [t[0] for t in inputs(1, lq, lk, 4, 2, seed=i)] for i, (lq, lk) in enumerate(zip(lengths_q, lengths_k)))))
    tensors = [t.detach().requires_grad_() for t in (q, k, v)]
    cu_q = torch.tensor([0, *torch.tensor(lengths_q).cumsum(0).tolist()])
    cu_k = torch.tensor([0, *torch.tensor(lengths_k).cumsum(0).tolist()])

    def per_sequence(q, k, v):
        return torch.cat([naive(q[None, a:b], k[None, c:d], v[None, c:d], causal=True)[0]
                          for a, b, c, d in zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:])])

    assert_same_with_grads(lambda q, k, v: flash_attn_varlen_func(q, k, v, cu_q, cu_k, 5, 6, causal=True),
                           per_sequence, tensors)
