"""CPU stand-ins for the two flash-attn functions fla's softmax-attention layer (`fla.layers.attn.Attention`, the
`attn` layers of hybrid configs) calls: `flash_attn_func` and `flash_attn_varlen_func`, on PyTorch's
scaled-dot-product attention.

flash-attn's conventions, kept here: `[B, T, H, D]` (packed `[total, H, D]` with `cu_seqlens` for varlen), fewer
key/value heads than query heads shared by groups (GQA), the causal mask aligned to the bottom-right corner (with
T_q < T_k, query i sees keys j <= i + T_k - T_q: cached keys come first), and `window_size=(left, right)` with -1
for unbounded. The softmax scale defaults to D ** -0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refine.models.cpu_kernels.banner import announce_once


def _allowed(t_q: int, t_k: int, causal: bool, window_size, device) -> torch.Tensor | None:
    """[T_q, T_k] boolean mask of the keys each query sees (None: all)."""
    left, right = window_size if window_size is not None else (-1, -1)
    if not causal and left < 0 and right < 0:
        return None
    query = torch.arange(t_q, device=device)[:, None] + (t_k - t_q)  # bottom-right aligned
    key = torch.arange(t_k, device=device)[None, :]
    allowed = torch.ones(t_q, t_k, dtype=torch.bool, device=device)
    if causal:
        allowed &= key <= query
    if right >= 0:
        allowed &= key <= query + right
    if left >= 0:
        allowed &= key >= query - left
    return allowed


def _attend(q, k, v, causal, window_size, softmax_scale):
    """One batch [B, T, H, D] of attention, in fp32, returned in q's dtype."""
    groups = q.shape[2] // k.shape[2]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
    mask = _allowed(q.shape[1], k.shape[1], causal, window_size, q.device)
    out = F.scaled_dot_product_attention(q.transpose(1, 2).float(), k.transpose(1, 2).float(),
                                         v.transpose(1, 2).float(), attn_mask=mask, scale=softmax_scale)
    return out.transpose(1, 2).to(q.dtype)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), **kwargs):
    """flash-attn's fixed-length attention (no dropout: the project never trains with attention dropout)."""
    announce_once()
    if dropout_p:
        raise NotImplementedError("the CPU attention stand-in has no dropout")
    return _attend(q, k, v, causal, window_size, softmax_scale)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), **kwargs):
    """flash-attn's packed variable-length attention: sequence i is q[cu_q[i]:cu_q[i+1]] against
    k/v[cu_k[i]:cu_k[i+1]]."""
    announce_once()
    if dropout_p:
        raise NotImplementedError("the CPU attention stand-in has no dropout")
    outs = []
    bounds = zip(cu_seqlens_q.tolist(), cu_seqlens_q.tolist()[1:], cu_seqlens_k.tolist(), cu_seqlens_k.tolist()[1:])
    for q0, q1, k0, k1 in bounds:
        outs.append(_attend(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], causal, window_size, softmax_scale)[0])
    return torch.cat(outs, dim=0)
