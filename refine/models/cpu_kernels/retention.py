"""CPU stand-ins for `fla.ops.retention` (RetNet's multi-scale retention, fla 0.6.0 signatures).

Retention is simple GLA with a fixed log decay per head, `log(1 - 2^(-5 - h))` for head h (the "multi-scale"
part: head 0 forgets fastest). The chunk, fused-chunk and recurrent forms compute the same function; the parallel
form is the same outputs without a state.
"""

from __future__ import annotations

import torch

from refine.models.cpu_kernels.gated_delta_rule import state_layout
from refine.models.cpu_kernels.gla_core import auto_gla_core, check_varlen, chunk_gla_core, run_gla


def retention_decays(num_heads: int, device) -> torch.Tensor:
    """RetNet's per-head log decay `log(1 - 2^(-5 - h))`, h = 0 .. H-1 (fp32, as fla)."""
    return torch.log1p(-(2.0 ** (-5.0 - torch.arange(num_heads, dtype=torch.float, device=device))))


def _run(core, q, k, v, scale, initial_state, output_final_state, cu_seqlens, state_v_first=False):
    g = retention_decays(q.shape[2], q.device).expand(q.shape[:3])
    return run_gla(core, q=q, k=k, v=v, g=g, scale=scale, initial_state=initial_state,
                   output_final_state=output_final_state, cu_seqlens=cu_seqlens, state_v_first=state_v_first)


def chunk_retention(q, k, v, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None, **kwargs):
    """Retention, chunkwise form. q,k `[B,T,H,K]`, v `[B,T,H,V]`, state `[N,H,K,V]`."""
    if "head_first" in kwargs:
        raise DeprecationWarning("head_first has been removed. Inputs must be in `[B, T, H, ...]` format.")
    return _run(chunk_gla_core, q, k, v, scale, initial_state, output_final_state, cu_seqlens)


def fused_chunk_retention(q, k, v, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Retention, fused-chunk form (the same function as `chunk_retention`)."""
    return _run(chunk_gla_core, q, k, v, scale, initial_state, output_final_state, cu_seqlens)


def fused_recurrent_retention(q, k, v, scale=None, initial_state=None, output_final_state=False, reverse=False,
                              state_v_first=False, cu_seqlens=None, **kwargs):
    """Retention, recurrent form (decoding); 16+ token sequences use the equal chunk form."""
    state_v_first = state_layout(state_v_first, kwargs)
    if reverse:
        raise NotImplementedError("fused_recurrent_retention on CPU: `reverse=True` is not supported")
    return _run(auto_gla_core, q, k, v, scale, initial_state, output_final_state, cu_seqlens, state_v_first)


def parallel_retention(q, k, v, scale=None, output_attentions=False, cu_seqlens=None):
    """Retention, parallel form: `(o, None)`; attention weights (`output_attentions=True`) are refused."""
    if output_attentions:
        raise NotImplementedError("parallel_retention on CPU: `output_attentions=True` is not supported")
    check_varlen(q, None, cu_seqlens)
    o, _ = _run(chunk_gla_core, q, k, v, scale, None, False, cu_seqlens)
    return o, None
