"""Causal sliding-window attention of the LaCT layer, pure PyTorch, with an optional flash-attn path on CUDA.

Window rule (as upstream's flash-attn `window_size=(W-1, 0)` on unpadded tokens): query t sees key j iff key j is a
real token and 0 ≤ rank(t) − rank(j) ≤ W − 1, where rank counts real tokens. Pad query rows output 0 (flash-attn's
`pad_input`). Scores and softmax run in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch

_QUERY_BLOCK = 256  # bounds the score matrix at heads × 256 × (256 + W − 1)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _attend(q, k, v, allowed, scale):
    """softmax(q kᵀ·scale masked by `allowed`) v. q: [B, Tq, H, D], k/v: [B, Tk, H, D], allowed: [B, Tq, Tk]."""
    ct = _compute_dtype(q.dtype)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.to(ct), k.to(ct)) * scale
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v.to(ct)).to(q.dtype)


def sliding_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None, window: int
) -> torch.Tensor:
    """Self-attention over one whole segment (no cache). q, k, v: [B, L, H, D]; key_valid: [B, L] bool or None."""
    batch, length = q.shape[:2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    idx = torch.arange(length, device=q.device)
    if key_valid is None:
        rank = idx.expand(batch, length)
        valid = torch.ones(batch, length, dtype=torch.bool, device=q.device)
    else:
        valid = key_valid.bool()
        counts = valid.long().cumsum(-1)
        rank = counts - 1
    out = torch.empty_like(q)
    for start in range(0, length, _QUERY_BLOCK):
        end = min(start + _QUERY_BLOCK, length)
        # First key any query of the block can see: the earliest real key whose rank is ≥ (block's min rank − W + 1).
        if key_valid is None:
            key_start = max(0, start - window + 1)
        else:
            min_rank = counts[:, start - 1] if start else torch.zeros_like(counts[:, 0])  # first real query's rank
            first = torch.searchsorted(counts, (min_rank - window + 2).clamp(min=1).unsqueeze(-1)).min()
            key_start = int(min(first.item(), start))
        q_rank = rank[:, start:end, None]
        k_rank = rank[:, None, key_start:end]
        q_idx = idx[start:end, None]
        k_idx = idx[None, key_start:end]
        diff = q_rank - k_rank
        allowed = valid[:, None, key_start:end] & (k_idx <= q_idx) & (diff >= 0) & (diff <= window - 1)
        q_valid = valid[:, start:end, None]
        allowed = allowed | ~q_valid  # pad queries: any finite row (zeroed below) keeps gradients NaN-free
        block = _attend(q[:, start:end], k[:, key_start:end], v[:, key_start:end], allowed, scale)
        out[:, start:end] = torch.where(q_valid[..., None], block, torch.zeros((), dtype=block.dtype))
    return out


def cached_sliding_window_attention(q, k, v, q_rank, k_rank, q_valid, k_valid, window):
    """Attention of new queries against cached + new keys, with explicit ranks (decoding path).

    q: [B, T, H, D]; k, v: [B, S, H, D] (cache followed by the T new keys); q_rank/q_valid: [B, T];
    k_rank/k_valid: [B, S].
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    diff = q_rank[:, :, None] - k_rank[:, None, :]
    allowed = k_valid[:, None, :] & (diff >= 0) & (diff <= window - 1)
    allowed = allowed | ~q_valid[:, :, None]
    out = _attend(q, k, v, allowed, scale)
    return torch.where(q_valid[..., None, None], out, torch.zeros((), dtype=out.dtype))


@functools.cache
def flash_attn_available() -> bool:
    """True when the optional flash-attn package is importable (checked without importing CUDA code)."""
    return importlib.util.find_spec("flash_attn") is not None


def flash_sliding_window_attention(q, k, v, key_valid, window):
    """GPU path: flash-attn varlen over the real tokens (UNVERIFIED on GPU in this project's CI)."""
    from flash_attn import flash_attn_varlen_func

    batch, length, heads, dim = q.shape
    valid = (
        torch.ones(batch, length, dtype=torch.bool, device=q.device) if key_valid is None else key_valid.bool()
    )
    flat = valid.flatten()
    indices = flat.nonzero().squeeze(-1)
    seqlens = valid.sum(-1, dtype=torch.int32)
    cu_seqlens = torch.nn.functional.pad(seqlens.cumsum(0, dtype=torch.int32), (1, 0))
    max_len = int(seqlens.max().item())

    def unpad(x):
        return x.reshape(batch * length, heads, dim)[indices]

    out = flash_attn_varlen_func(
        unpad(q), unpad(k), unpad(v), cu_seqlens, cu_seqlens, max_len, max_len,
        causal=True, window_size=(window - 1, 0),
    )
    padded = torch.zeros(batch * length, heads, dim, dtype=out.dtype, device=out.device)
    padded[indices] = out
    return padded.view(batch, length, heads, dim)
