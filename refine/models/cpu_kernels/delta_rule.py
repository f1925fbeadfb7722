"""CPU stand-ins for `fla.ops.delta_rule.chunk_delta_rule` and `fused_recurrent_delta_rule` (fla 0.6.0 signatures).

Same layout (`[B, T, H, D]`), same arguments, same return values as fla's Triton ops, but they also accept fp32
(fla's chunk op asserts bf16/fp16) and fp64.
"""

from __future__ import annotations

import torch

from refine.models.cpu_kernels.delta_core import (
    auto_delta_core,
    chunk_delta_core,
    recurrent_delta_core,
    run_delta_rule,
)

CHUNK_SIZES = (16, 32, 64)


def chunk_size_from(kwargs: dict, op: str = "") -> int:
    """The `chunk_size` keyword of fla's chunk ops (popped from `kwargs`, default 64), refused as fla refuses it;
    `op` names the op in the message as fla does."""
    if "head_first" in kwargs:
        raise DeprecationWarning("head_first has been removed. Inputs must be in `[B, T, H, ...]` format.")
    chunk_size = kwargs.pop("chunk_size", 64)
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"`chunk_size` must be 16, 32, or 64{op}, got {chunk_size}.")
    return chunk_size


def chunk_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    cu_seqlens_cpu: torch.LongTensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Delta rule, chunkwise form. q,k `[B,T,H,K]`, v `[B,T,H,V]`, beta `[B,T,H]`, state `[N,H,K,V]`."""
    chunk_size = chunk_size_from(kwargs)
    if beta.ndim != 3:
        raise ValueError(f"beta must be of shape [B, T, H], got {tuple(beta.shape)}")
    return run_delta_rule(
        chunk_delta_core,
        q=q, k=k, v=v, beta=beta, g=None, scale=scale,
        initial_state=initial_state, output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens, chunk_size=chunk_size,
    )


def _recurrent_form(core, name: str, doc: str):
    """A recurrent-form op of fla's `fused_recurrent_delta_rule` signature computed by `core`."""

    def delta_rule(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        beta: torch.Tensor | None = None,
        scale: float | None = None,
        initial_state: torch.Tensor | None = None,
        output_final_state: bool = False,
        use_qk_l2norm_in_kernel: bool = False,
        cu_seqlens: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if beta is None:
            beta = torch.ones_like(q[..., 0])
        return run_delta_rule(
            core,
            q=q, k=k, v=v, beta=beta, g=None, scale=scale,
            initial_state=initial_state, output_final_state=output_final_state,
            use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens,
        )

    delta_rule.__name__ = delta_rule.__qualname__ = name
    delta_rule.__doc__ = doc
    return delta_rule


fused_recurrent_delta_rule = _recurrent_form(
    auto_delta_core, "fused_recurrent_delta_rule",
    """Delta rule, recurrent form (decoding). beta `[B,T,H]` or per channel `[B,T,H,V]`; default all ones.

    Sequences of 16+ tokens are computed with the (equivalent) chunk form, see `auto_delta_core`.
    """,
)
recurrent_delta_rule = _recurrent_form(
    recurrent_delta_core, "recurrent_delta_rule",
    """Like `fused_recurrent_delta_rule`, but always token by token (the plain recurrence, whatever T).""",
)
