"""CPU stand-in for `fla.modules.rotary.ops.rotary_embedding` (fla 0.6.0), which `RotaryEmbedding.forward` calls.

RetNet's retention and fla's attention layer rotate queries and keys with it. Semantics as fla's kernel: the first
`R2 = 2 * cos.shape[1]` channels of each head are rotated (halves, or adjacent pairs when `interleaved`), the rest
pass through; token t of a sequence takes position `t + offset` (offset shared, or one per sequence; positions
restart at every `cu_seqlens` boundary), and a position outside the cache (a negative one under left padding)
gives zeros in the rotated channels. Computed in fp32, returned in `x`'s dtype; ordinary autograd.
"""

from __future__ import annotations

import torch

from refine.models.cpu_kernels.banner import announce_once


def _positions(x: torch.Tensor, seqlen_offsets, cu_seqlens) -> torch.Tensor:
    """`[B, T]` cache row of every token."""
    B, T = x.shape[:2]
    t = torch.arange(T, device=x.device)
    if cu_seqlens is None:
        offsets = seqlen_offsets if isinstance(seqlen_offsets, torch.Tensor) else torch.tensor([seqlen_offsets])
        return t[None, :] + offsets.to(x.device, torch.long).reshape(-1, 1).expand(B, 1)
    cu = cu_seqlens.to(x.device, torch.long)
    seq_id = torch.repeat_interleave(torch.arange(len(cu) - 1, device=x.device), cu.diff())
    pos = t - cu[seq_id]
    if isinstance(seqlen_offsets, torch.Tensor):
        pos = pos + seqlen_offsets.to(x.device, torch.long)[seq_id]
    else:
        pos = pos + seqlen_offsets
    return pos[None, :]


def rotary_embedding(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0, cu_seqlens=None,
                     chunk_indices=None):
    """fla's `rotary_embedding`: x `[B, T, H, D]`, cos/sin `[TR, R]` -> x with its first 2R channels rotated."""
    announce_once()
    if inplace:
        raise NotImplementedError("rotary_embedding on CPU: `inplace=True` is not supported")
    TR, R = cos.shape
    if 2 * R > x.shape[-1]:
        raise ValueError(f"Rotary dimension must not exceed head dimension, got rotary_dim={2 * R} and "
                         f"head_dim={x.shape[-1]}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    pos = _positions(x, seqlen_offsets, cu_seqlens)  # [B or 1, T]
    valid = ((pos >= 0) & (pos < TR))[..., None, None]
    rows = pos.clamp(0, TR - 1)
    c, s = cos.to(dtype)[rows][..., None, :], sin.to(dtype)[rows][..., None, :]  # [B, T, 1, R]
    xr = x[..., : 2 * R].to(dtype)
    if interleaved:
        x0, x1 = xr[..., 0::2], xr[..., 1::2]
        rotated = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2)
    else:
        x0, x1 = xr[..., :R], xr[..., R:]
        rotated = torch.cat([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1)
    rotated = torch.where(valid, rotated, torch.zeros_like(rotated))
    return torch.cat([rotated.to(x.dtype), x[..., 2 * R:]], dim=-1)
