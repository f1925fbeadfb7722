"""CPU stand-ins for `fla.ops.gla.chunk_gla` / `fused_recurrent_gla` (fla 0.6.0 signatures), used by GLA and HGRN2.

Both layers pass per-key log decays `gk [B, T, H, K]` and keep their state value-first (`state_v_first=True`,
`[N, H, V, K]`). `fused_chunk_gla` is not replaced: fla 0.6.0's raises "deprecated, use chunk_gla" on any device.
"""

from __future__ import annotations

import torch

from refine.models.cpu_kernels.gated_delta_rule import state_layout
from refine.models.cpu_kernels.gla_core import auto_gla_core, chunk_gla_core, default_chunk, run_gla


def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    cu_seqlens_cpu: torch.LongTensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GLA, chunkwise form. q,k,g `[B,T,H,K]`, v `[B,T,H,V]`, state `[N,H,K,V]` (`[N,H,V,K]` if state_v_first)."""
    if g.shape != q.shape:
        raise ValueError(f"q, k, g must have the same shape, got q {tuple(q.shape)} and g {tuple(g.shape)}")
    return run_gla(
        chunk_gla_core, q=q, k=k, v=v, g=g, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens, state_v_first=state_v_first,
        chunk_size=default_chunk(g),
    )


def fused_recurrent_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    reverse: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GLA, recurrent form (decoding); 16+ token sequences use the equal chunk form.

    Value decays (`gv`) and `reverse=True` are refused: no fla layer of the supported families passes them.
    """
    state_v_first = state_layout(state_v_first, kwargs)
    if gv is not None or reverse:
        raise NotImplementedError("fused_recurrent_gla on CPU: `gv` and `reverse=True` are not supported")
    return run_gla(
        auto_gla_core, q=q, k=k, v=v, g=gk, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens, state_v_first=state_v_first,
    )
