"""CPU stand-ins for `fla.ops.gated_delta_rule.chunk_gated_delta_rule` / `fused_recurrent_gated_delta_rule`.

fla 0.6.0 signatures, including what GatedDeltaNet passes: the in-kernel gate
`g = -exp(A_log) * softplus(g_raw + dt_bias)` (`use_gate_in_kernel`), `beta = sigmoid(beta_raw)` (x2 with
`allow_neg_eigval`), q/k l2norm, grouped value heads (HV > H) and the value-first state layout `[N, HV, V, K]`.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from refine.models.cpu_kernels.delta_core import auto_delta_core, chunk_delta_core, run_delta_rule
from refine.models.cpu_kernels.delta_rule import chunk_size_from


def gdn_gate(g: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor | None = None) -> torch.Tensor:
    """GDN log decay `-exp(A_log) * softplus(g + dt_bias)` in fp32 (fp64 for fp64 input), as fla's `naive_gdn_gate`."""
    dtype = torch.float64 if g.dtype == torch.float64 else torch.float32
    g = g.to(dtype)
    if dt_bias is not None:
        g = g + dt_bias.to(dtype)
    return -A_log.to(dtype).exp() * F.softplus(g)


def _prepare_gate_and_beta(g, beta, use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel, allow_neg_eigval):
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise ValueError("`allow_neg_eigval=True` requires `use_beta_sigmoid_in_kernel=True`.")
    if use_gate_in_kernel:
        if A_log is None:
            raise ValueError("`A_log` must be provided when `use_gate_in_kernel=True`.")
        if g is None:
            raise ValueError("`g` (raw pre-activation) must be provided when `use_gate_in_kernel=True`.")
        g = gdn_gate(g, A_log, dt_bias)
    if use_beta_sigmoid_in_kernel:
        beta = beta.float().sigmoid() if beta.dtype != torch.float64 else beta.sigmoid()
        if allow_neg_eigval:
            beta = beta * 2.0
    return g, beta


def state_layout(state_v_first: bool, kwargs: dict) -> bool:
    """`state_v_first`, or fla's deprecated `transpose_state_layout` keyword popped from `kwargs` (as fla)."""
    if "transpose_state_layout" in kwargs:
        if state_v_first:
            raise ValueError("Cannot pass both `state_v_first` and the deprecated `transpose_state_layout`.")
        warnings.warn("`transpose_state_layout` is deprecated and renamed to `state_v_first`.", DeprecationWarning, 2)
        state_v_first = kwargs.pop("transpose_state_layout")
    return state_v_first


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    cu_seqlens_cpu: torch.LongTensor | None = None,
    chunk_indices: torch.LongTensor | None = None,
    cp_context=None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule, chunkwise form. q,k `[B,T,H,K]`, v `[B,T,HV,V]`, g/beta `[B,T,HV]`."""
    state_v_first = state_layout(state_v_first, kwargs)
    if cp_context is not None:
        raise NotImplementedError("context parallelism (cp_context) is not supported by the CPU kernels")
    chunk_size = chunk_size_from(kwargs, " for Gated Delta Rule")
    g, beta = _prepare_gate_and_beta(
        g, beta, kwargs.get("use_gate_in_kernel", False), kwargs.get("A_log"), kwargs.get("dt_bias"),
        use_beta_sigmoid_in_kernel, allow_neg_eigval,
    )
    return run_delta_rule(
        chunk_delta_core,
        q=q, k=k, v=v, beta=beta, g=g, scale=scale,
        initial_state=initial_state, output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens,
        state_v_first=state_v_first, chunk_size=chunk_size,
    )


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_gate_in_kernel: bool = False,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule, recurrent form (decoding); 16+ token sequences use the equivalent chunk form.

    Per-key/value decays (`gk`, `gv`) are not supported on CPU (GatedDeltaNet does not use them).
    """
    state_v_first = state_layout(state_v_first, kwargs)
    if gk is not None or gv is not None:
        raise NotImplementedError("gk/gv decays are not supported by the CPU kernels (GatedDeltaNet does not use them)")
    if beta is None:
        beta = torch.ones_like(q[..., 0])
    if not use_gate_in_kernel:
        A_log = dt_bias = None
    g, beta = _prepare_gate_and_beta(
        g, beta, use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel, allow_neg_eigval
    )
    return run_delta_rule(
        auto_delta_core,
        q=q, k=k, v=v, beta=beta, g=g, scale=scale,
        initial_state=initial_state, output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens, state_v_first=state_v_first,
    )
