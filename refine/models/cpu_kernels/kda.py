"""CPU stand-ins for `fla.ops.kda.chunk_kda` / `fused_recurrent_kda` (Kimi Delta Attention, fla 0.6.0 signatures).

KDA is the gated delta rule with one log decay per key channel, `g [B, T, HV, K]`. The KDA layer passes the raw
gate with `use_gate_in_kernel=True` (then `g = -exp(A_log) * softplus(g + dt_bias)`, or with `lower_bound`:
`lower_bound * sigmoid(exp(A_log) * (g + dt_bias))`), the raw beta with `use_beta_sigmoid_in_kernel=True`, q/k
l2norm, grouped value heads and the value-first state `[N, HV, V, K]`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from refine.models.cpu_kernels.delta_core import run_delta_rule
from refine.models.cpu_kernels.gated_delta_rule import state_layout
from refine.models.cpu_kernels.keyed_delta_core import auto_keyed_delta_core, chunk_keyed_delta_core


def kda_gate(g: torch.Tensor, A_log: torch.Tensor | None, dt_bias: torch.Tensor | None,
             lower_bound: float | None = None) -> torch.Tensor:
    """KDA's per-key log decay from the raw gate `g [..., HV, K]` (fp32; fp64 for fp64 input)."""
    HV, K = g.shape[-2:]
    dtype = torch.float64 if g.dtype == torch.float64 else torch.float32
    g = g.to(dtype)
    if dt_bias is not None:
        g = g + dt_bias.to(dtype).view(HV, K)
    if lower_bound is not None:
        if A_log is not None:
            g = A_log.to(dtype).view(HV, 1).exp() * g
        return lower_bound * torch.sigmoid(g)
    return -A_log.to(dtype).view(HV, 1).exp() * F.softplus(g)


def _prepare(g, beta, use_gate_in_kernel, A_log, dt_bias, lower_bound, use_beta_sigmoid_in_kernel, allow_neg_eigval):
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise ValueError("`allow_neg_eigval=True` requires `use_beta_sigmoid_in_kernel=True`.")
    if use_gate_in_kernel:
        if A_log is None and lower_bound is None:
            raise ValueError("`A_log` must be provided when `use_gate_in_kernel=True` and `lower_bound` is not set.")
        g = kda_gate(g, A_log, dt_bias, lower_bound)
    if use_beta_sigmoid_in_kernel:
        beta = beta.sigmoid() if beta.dtype == torch.float64 else beta.float().sigmoid()
        beta = beta * 2.0 if allow_neg_eigval else beta
    return g, beta


def _check(q, v, g, beta):
    B, T, H, K = q.shape
    HV = v.shape[2]
    if tuple(g.shape) != (B, T, HV, K):
        raise ValueError(f"g must have shape [B, T, HV, K]={[B, T, HV, K]}, got {list(g.shape)}")
    if tuple(beta.shape) != (B, T, HV):
        raise ValueError(f"beta must have shape [B, T, HV]={[B, T, HV]}, got {list(beta.shape)}")


def chunk_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
              use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, use_beta_sigmoid_in_kernel=False,
              allow_neg_eigval=False, safe_gate=False, lower_bound=None, disable_recompute=False,
              return_intermediate_states=False, state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None,
              cp_context=None, use_graph=False, max_num_seqs=None, **kwargs):
    """KDA, chunkwise form. q,k `[B,T,H,K]`, v `[B,T,HV,V]`, g `[B,T,HV,K]`, beta `[B,T,HV]`, state `[N,HV,K,V]`.

    `safe_gate` only selects fla's faster kernel (gates assumed in [lower_bound, 0)); the function is the same.
    """
    state_v_first = state_layout(state_v_first, kwargs)
    if cp_context is not None or return_intermediate_states:
        raise NotImplementedError("chunk_kda on CPU: cp_context / return_intermediate_states are not supported")
    if kwargs.get("chunk_size", 64) not in (32, 64):
        raise ValueError(f"`chunk_size` must be either 32 or 64 for KDA, got {kwargs['chunk_size']}.")
    if safe_gate and use_gate_in_kernel and (lower_bound is None or not -5 <= lower_bound < 0):
        raise ValueError(f"`lower_bound` must be in the safe range [-5, 0) when `safe_gate=True`, got {lower_bound}.")
    _check(q, v, g, beta)
    g, beta = _prepare(g, beta, use_gate_in_kernel, kwargs.get("A_log"), kwargs.get("dt_bias"), lower_bound,
                       use_beta_sigmoid_in_kernel, allow_neg_eigval)
    return run_delta_rule(
        functools.partial(chunk_keyed_delta_core, decay_first=True),
        q=q, k=k, v=v, beta=beta, g=g, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        cu_seqlens=cu_seqlens, state_v_first=state_v_first,
    )


def fused_recurrent_kda(q, k, v, g, beta, A_log=None, dt_bias=None, scale=None, initial_state=None,
                        output_final_state=False, use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
                        use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, lower_bound=None,
                        state_v_first=False, cu_seqlens=None, **kwargs):
    """KDA, recurrent form (decoding); 16+ token sequences use the equal chunk form."""
    state_v_first = state_layout(state_v_first, kwargs)
    _check(q, v, g, beta)
    g, beta = _prepare(g, beta, use_gate_in_kernel, A_log, dt_bias, lower_bound, use_beta_sigmoid_in_kernel,
                       allow_neg_eigval)
    return run_delta_rule(
        functools.partial(auto_keyed_delta_core, decay_first=True),
        q=q, k=k, v=v, beta=beta, g=g, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        cu_seqlens=cu_seqlens, state_v_first=state_v_first,
    )
