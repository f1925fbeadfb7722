"""CPU stand-ins for the forward / backward halves of fla's Triton `swish`, `sigmoid` and `sqrelu` (fla 0.6.0).

`fla.modules.activations.swish` (`SwishFunction.apply`, also `ACT2FN['swish' / 'silu']`, GLA's output gate and
HGRN2's query activation) calls the module-level `swish_fwd` / `swish_bwd`; replacing those two keeps every
reference to `swish` (dict entries and names imported elsewhere) working. Same for `sigmoid` and `sqrelu`. fp32 math,
input dtype.
"""

from __future__ import annotations

import torch

from refine.models.cpu_kernels.banner import announce_once


def _fp(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def swish_fwd(x: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    """`x * sigmoid(x)`."""
    announce_once()
    xf = _fp(x)
    return (xf * torch.sigmoid(xf)).to(x.dtype)


def swish_bwd(x: torch.Tensor, dy: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    """d swish / dx = s * (1 + x * (1 - s)), s = sigmoid(x), times the incoming gradient."""
    xf = _fp(x)
    s = torch.sigmoid(xf)
    return (_fp(dy) * s * (1 + xf * (1 - s))).to(x.dtype)


def sigmoid_fwd(x: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    """`sigmoid(x)`."""
    announce_once()
    return torch.sigmoid(_fp(x)).to(x.dtype)


def sigmoid_bwd(x: torch.Tensor, dy: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    """d sigmoid / dx = s * (1 - s), times the incoming gradient."""
    s = torch.sigmoid(_fp(x))
    return (_fp(dy) * s * (1 - s)).to(x.dtype)


def sqrelu_fwd(x: torch.Tensor) -> torch.Tensor:
    """`relu(x)^2` (RWKV-7's channel mix; fla's is `torch.compile`d, which on CPU would need a C++ toolchain)."""
    announce_once()
    r = torch.relu(_fp(x))
    return (r * r).to(x.dtype)


def sqrelu_bwd(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d relu(x)^2 / dx = 2 relu(x), times the incoming gradient."""
    return (2.0 * _fp(g) * torch.relu(_fp(x))).to(x.dtype)
