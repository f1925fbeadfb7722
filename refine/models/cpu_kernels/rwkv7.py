"""CPU stand-ins for the fla 0.6.0 ops RWKV-7 calls: the DPLR state update (`chunk_rwkv7`,
`fused_recurrent_rwkv7`, `fused_mul_recurrent_rwkv7`), the token shift (`token_shift`, whose cache is each
sequence's last input), and three fused element-wise helpers (`fused_addcmul_rwkv7`, `fused_k_rwkv7`,
`gate_output_correction`). Ordinary autograd; fp32 math where fla's kernels use it.
"""

from __future__ import annotations

import torch

from refine.models.cpu_kernels.banner import announce_once
from refine.models.cpu_kernels.dplr_core import auto_dplr_core, chunk_dplr_core, run_dplr


def chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
                cu_seqlens_cpu=None, safe_gate=False, chunk_size=None, disable_recompute=False, cp_context=None,
                lower_bound=None):
    """RWKV-7's state update, chunkwise. r,w,k,a,b `[B,T,H,K]` (w: log decay), v `[B,T,H,V]`, state `[N,H,K,V]`.
    `safe_gate` / `lower_bound` / `chunk_size` only pick fla's kernel variant; the function is the same."""
    if cp_context is not None:
        raise NotImplementedError("chunk_rwkv7 on CPU: cp_context is not supported")
    return run_dplr(chunk_dplr_core, r, w, k, v, a, b, scale, initial_state, output_final_state, cu_seqlens)


def fused_recurrent_rwkv7(r, w, k, v, a, b, scale=None, initial_state=None, output_final_state=True,
                          cu_seqlens=None):
    """Recurrent form (decoding); 16+ token sequences use the equal chunk form."""
    return run_dplr(auto_dplr_core, r, w, k, v, a, b, scale, initial_state, output_final_state, cu_seqlens)


def fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, scale=1.0, initial_state=None, output_final_state=False,
                              reverse=False, cu_seqlens=None):
    """The layer's decoding call: the low-rank pair is formed in the kernel, `a = -kk`, `b = kk * a`."""
    if reverse:
        raise NotImplementedError("fused_mul_recurrent_rwkv7 on CPU: `reverse=True` is not supported")
    return run_dplr(auto_dplr_core, r, w, k, v, -kk, kk * a, scale, initial_state, output_final_state, cu_seqlens)


def token_shift(x, cu_seqlens=None, cache=None, output_cache=False, chunk_indices=None):
    """fla's `token_shift`: `delta_t = x_{t-1} - x_t`, x `[B,T,D]`, the previous token of the first one being
    `cache [N, D]` (zeros without one); the new cache is each sequence's last input (`output_cache=True`)."""
    announce_once()
    if cu_seqlens is None:
        previous = x.new_zeros(x.shape[0], 1, x.shape[2]) if cache is None else cache.to(x.dtype)[:, None]
        shifted = torch.cat([previous, x[:, :-1]], dim=1)
        last = x[:, -1]
    else:
        if x.shape[0] != 1:
            raise ValueError("Batch size must be 1 when using cu_seqlens")
        cu = cu_seqlens.to(torch.long)
        starts, ends = cu[:-1], cu[1:]
        shifted = torch.cat([x.new_zeros(1, 1, x.shape[2]), x[:, :-1]], dim=1)
        first = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
        first[starts[ends > starts]] = True
        # each sequence's first token reads its own cache row, never the previous sequence's last token
        seq_of = torch.repeat_interleave(torch.arange(len(starts), device=x.device), ends - starts)
        start_value = x.new_zeros(x.shape[1], x.shape[2]) if cache is None else cache.to(x.dtype)[seq_of]
        shifted = torch.where(first[None, :, None], start_value[None], shifted)
        last = x[0, (ends - 1).clamp(min=0)]
    delta = shifted - x
    return (delta, last) if output_cache else delta


def fused_addcmul_rwkv7(hidden_states, delta, xr, xw, xk, xv, xa, xg=None):
    """`hidden + delta * x_*` for the six (five without `xg`) mixing vectors."""
    mixes = (xr, xw, xk, xv, xa) + ((xg,) if xg is not None else ())
    out = tuple(torch.addcmul(hidden_states, delta, m) for m in mixes)
    return out if xg is not None else (*out, None)


def fused_k_rwkv7(k, a, ka, cu_seqlens=None, cu_seqlens_cpu=None):
    """RWKV-7's key update `k * (1 + (a - 1) * ka)`."""
    return k + k * (a - 1) * ka


def gate_output_correction(o, r, k, r_k, v, g):
    """`(o + (sum_d r * k * r_k) * v) * g`: o, g `[B,T,H*D]`; r, k, v `[B,T,H,D]`; r_k `[H,D]`."""
    bonus = (r * k * r_k).sum(-1, keepdim=True) * v
    return (o + bonus.reshape(o.shape)) * g
