"""CPU stand-ins for `fla.ops.comba.chunk_comba` / `fused_recurrent_comba` (fla 0.6.0 signatures).

Comba reads the state with its own prediction key `p` (the Comba layer passes `p = k * sigmoid(decay)` or `k`),
before the token's scalar decay `g [B, T, HV]`: `u_t = beta_t (v_t - S_{t-1}^T p_t)`,
`S_t = exp(g_t) S_{t-1} + k_t u_t^T`, as fla's Triton kernels and `naive_chunk_comba` compute it.
(fla's `naive_recurrent_comba` decays before the read, the gated-delta-rule order, and differs from both.)
With `use_qk_l2norm_in_kernel` q, k and p are l2-normalised.
"""

from __future__ import annotations

import functools

import torch

from refine.models.cpu_kernels.delta_core import run_delta_rule
from refine.models.cpu_kernels.keyed_delta_core import auto_keyed_delta_core, chunk_keyed_delta_core


def _run(core, q, k, v, p, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, cu_seqlens):
    p = k if p is None else p
    if not q.shape[2] == k.shape[2] == p.shape[2]:
        raise ValueError(f"q, k and p must have the same number of heads, but got q.shape[2]={q.shape[2]}, "
                         f"k.shape[2]={k.shape[2]} and p.shape[2]={p.shape[2]}")
    if beta is None:
        beta = torch.ones_like(v[..., 0])
    return run_delta_rule(
        functools.partial(core, decay_first=False),
        q=q, k=k, v=v, beta=beta, g=g, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        cu_seqlens=cu_seqlens, p=p,
    )


def chunk_comba(q, k, v, p=None, g=None, beta=None, scale=None, initial_state=None, output_final_state=False,
                use_qk_l2norm_in_kernel=False, cu_seqlens=None, cu_seqlens_cpu=None, **kwargs):
    """Comba, chunkwise form. q,k,p `[B,T,H,K]`, v `[B,T,HV,V]`, g/beta `[B,T,HV]`, state `[N,HV,K,V]`."""
    return _run(chunk_keyed_delta_core, q, k, v, p, g, beta, scale, initial_state, output_final_state,
                use_qk_l2norm_in_kernel, cu_seqlens)


def fused_recurrent_comba(q, k, p, v, g, beta=None, scale=None, initial_state=None, output_final_state=False,
                          use_qk_l2norm_in_kernel=False, cu_seqlens=None):
    """Comba, recurrent form (decoding; note fla's argument order q, k, p, v); 16+ tokens use the chunk form."""
    return _run(auto_keyed_delta_core, q, k, v, p, g, beta, scale, initial_state, output_final_state,
                use_qk_l2norm_in_kernel, cu_seqlens)
