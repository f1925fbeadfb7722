"""CPU stand-ins for `fla.modules.RMSNorm.forward`, `FusedRMSNormGated.forward` and `L2Norm.forward` (fla 0.6.0).

Same semantics as fla's fused kernels: the optional residual is added first (and returned with `prenorm=True`,
in fp32 when `residual_in_fp32`), statistics are computed in fp32, the output has the input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refine.models.cpu_kernels.banner import announce_once
from refine.models.cpu_kernels.delta_core import l2norm


def _rms_norm(x, weight, bias, eps, residual, residual_in_fp32):
    announce_once()
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    h = x.to(dtype)
    if residual is not None:
        h = h + residual.to(dtype)
    residual_dtype = residual.dtype if residual is not None else (torch.float32 if residual_in_fp32 else x.dtype)
    y = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(dtype)
    if bias is not None:
        y = y + bias.to(dtype)
    return y, h.to(residual_dtype)


def rms_norm_forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
    """`fla.modules.RMSNorm.forward`: `(x + residual) / rms * weight (+ bias)`; `(y, x + residual)` if prenorm."""
    y, residual_out = _rms_norm(x, self.weight, self.bias, self.eps, residual, residual_in_fp32)
    y = y.to(x.dtype)
    return (y, residual_out) if prenorm else y


def rms_norm_gated_forward(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
    """`fla.modules.FusedRMSNormGated.forward`: RMSNorm(x) * swish(g) (or * sigmoid(g) for `sigmoid`)."""
    y, residual_out = _rms_norm(x, self.weight, self.bias, self.eps, residual, residual_in_fp32)
    gate = g.to(y.dtype)
    if self.activation in ("swish", "silu"):
        y = y * F.silu(gate)
    elif self.activation == "sigmoid":
        y = y * torch.sigmoid(gate)
    else:
        raise ValueError(f"Unsupported activation: {self.activation}")
    y = y.to(x.dtype)
    return (y, residual_out) if prenorm else y


def l2norm_forward(self, x):
    """`fla.modules.L2Norm.forward`."""
    return l2norm(x, eps=self.eps, output_dtype=self.output_dtype)


def rms_norm_linear(x, norm_weight, norm_bias, linear_weight, linear_bias, residual=None, eps=1e-5, prenorm=False,
                    residual_in_fp32=False):
    """`fla.modules.layernorm.rms_norm_linear` (HGRN2's output): `linear(RMSNorm(x + residual))`, the normalised
    activations cast to the linear weight's dtype first; `(out, x + residual)` if prenorm."""
    y, residual_out = _rms_norm(x, norm_weight, norm_bias, eps, residual, residual_in_fp32)
    y = y.to(x.dtype)
    out = F.linear(y.to(linear_weight.dtype), linear_weight, linear_bias)
    return (out, residual_out) if prenorm else out
