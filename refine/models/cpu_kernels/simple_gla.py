"""CPU stand-ins for `fla.ops.simple_gla.chunk_simple_gla` / `fused_recurrent_simple_gla` (fla 0.6.0 signatures).

Simple GLA decays the whole state by one scalar per head and token: data-dependent log decays `g [B, T, H]`
and / or a constant per-head log decay `g_gamma [H]` (retention's). Given both, the decay is their sum.
"""

from __future__ import annotations

import torch

from refine.models.cpu_kernels.gated_delta_rule import state_layout
from refine.models.cpu_kernels.gla_core import auto_gla_core, chunk_gla_core, run_gla


def head_decays(q: torch.Tensor, g: torch.Tensor | None, g_gamma: torch.Tensor | None) -> torch.Tensor | None:
    """The per-token, per-head log decay `[B, T, H]` from `g` and / or `g_gamma` (None when neither is given)."""
    if g_gamma is None:
        return g
    constant = g_gamma.to(torch.float64 if q.dtype == torch.float64 else torch.float32).expand(q.shape[:3])
    return constant if g is None else g + constant


def _chunk_size(kwargs: dict) -> int:
    if "head_first" in kwargs:
        raise DeprecationWarning("head_first has been removed. Inputs must be in `[B, T, H, ...]` format.")
    chunk_size = kwargs.pop("chunk_size", None) or 64
    if chunk_size != 2 ** (chunk_size.bit_length() - 1):
        raise ValueError(f"`chunk_size` must be a power of 2, got {chunk_size}.")
    return chunk_size


def chunk_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    cu_seqlens_cpu: torch.LongTensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Simple GLA, chunkwise form. q,k `[B,T,H,K]`, v `[B,T,H,V]`, g `[B,T,H]`, g_gamma `[H]`, state `[N,H,K,V]`."""
    chunk_size = _chunk_size(kwargs)
    return run_gla(
        chunk_gla_core, q=q, k=k, v=v, g=head_decays(q, g, g_gamma), scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens, state_v_first=state_v_first,
        chunk_size=chunk_size,
    )


def fused_recurrent_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    reverse: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Simple GLA, recurrent form (decoding); 16+ token sequences use the equal chunk form. `reverse` is refused."""
    state_v_first = state_layout(state_v_first, kwargs)
    if reverse:
        raise NotImplementedError("fused_recurrent_simple_gla on CPU: `reverse=True` is not supported")
    return run_gla(
        auto_gla_core, q=q, k=k, v=v, g=head_decays(q, g, g_gamma), scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens, state_v_first=state_v_first,
    )
