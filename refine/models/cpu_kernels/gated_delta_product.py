"""CPU stand-in for `fla.ops.gated_delta_product.chunk_gated_delta_product` (Gated DeltaProduct, fla 0.6.0).

Each token applies `num_householder` = n delta-rule steps to the state (keys, values and betas come n per token,
`[B, T*n, H, ...]`), after the token's scalar decay `g [B, T, H]` and before its read-out. That is the gated delta
rule over the T*n sub-steps with the decay on each token's first sub-step and the query on its last, which is how
it is computed here (`delta_core`'s chunk form), and how fla's layer already calls the recurrent form when decoding
(`fused_recurrent_gated_delta_rule`, replaced by the gated-delta-rule stand-in).
"""

from __future__ import annotations

import torch

from refine.models.cpu_kernels.delta_core import chunk_delta_core, run_delta_rule


def chunk_gated_delta_product(q, k, v, g, beta, num_householder, scale=None, initial_state=None,
                              output_final_state=False, use_qk_l2norm_in_kernel=False, cu_seqlens=None,
                              cu_seqlens_cpu=None, cp_context=None):
    """q `[B,T,H,K]`, k `[B,T*n,H,K]`, v `[B,T*n,H,V]`, beta `[B,T*n,H]`, g `[B,T,H]` or None, state `[N,H,K,V]`."""
    if cp_context is not None:
        raise NotImplementedError("chunk_gated_delta_product on CPU: cp_context is not supported")
    B, T, H, K = q.shape
    n = num_householder
    if k.shape[1] != T * n or v.shape[1] != T * n or beta.shape[1] != T * n:
        raise ValueError(f"k, v and beta must have T * num_householder = {T * n} tokens, got {k.shape[1]}, "
                         f"{v.shape[1]} and {beta.shape[1]}")
    if scale is None:
        scale = K**-0.5
    # the query reads after a token's last sub-step; its decay applies before the first
    q_steps = q.new_zeros(B, T, n, H, K)
    q_steps = torch.cat([q_steps[:, :, :-1], q[:, :, None]], dim=2).flatten(1, 2)
    g_steps = None
    if g is not None:
        g_steps = torch.cat([g[:, :, None], g.new_zeros(B, T, n - 1, H)], dim=2).flatten(1, 2)
    o, final_state = run_delta_rule(
        chunk_delta_core,
        q=q_steps, k=k, v=v, beta=beta, g=g_steps, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        cu_seqlens=None if cu_seqlens is None else cu_seqlens * n,
    )
    return o.unflatten(1, (T, n))[:, :, -1], final_state
