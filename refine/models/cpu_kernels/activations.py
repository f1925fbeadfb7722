"""CPU stand-ins for fla's fused SwiGLU (`fla.modules.activations.swiglu` and `swiglu_linear`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refine.models.cpu_kernels.banner import announce_once


def swiglu(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`silu(x) * y`, computed in fp32 and returned in x's dtype (as fla's kernel)."""
    announce_once()
    if x.shape != y.shape:
        raise ValueError(f"swiglu: shape mismatch x={tuple(x.shape)} y={tuple(y.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (F.silu(x.to(dtype)) * y.to(dtype)).to(x.dtype)


def swiglu_linear(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`linear(swiglu(x, y), weight, bias)`."""
    return F.linear(swiglu(x, y), weight, bias)
