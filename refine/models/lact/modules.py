"""Small building blocks of LaCT in pure PyTorch, numerically following the fla modules upstream uses
(spec lact-model.md §4.2, §4.3, §6): RMSNorm (fp32 compute, optional fused residual add), rotate-half RoPE,
SwiGLU MLP, and the low-rank fast-weight initial value."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class RMSNorm(nn.Module):
    """y = x·rsqrt(mean(x²)+eps)·w computed in fp32 and cast once to the input dtype.

    With `residual`, returns (norm(x + residual), x + residual): the sum is formed in fp32, normalised unrounded,
    and returned rounded to the residual dtype (fla's fused `prenorm=True` call).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def _norm(self, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        x = x.to(_compute_dtype(x.dtype))
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(x.dtype)
        return y.to(out_dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return self._norm(x, x.dtype)
        total = x.to(_compute_dtype(x.dtype)) + residual.to(_compute_dtype(residual.dtype))
        return self._norm(total, x.dtype), total.to(residual.dtype)


def rotary_cos_sin(positions: torch.Tensor, dim: int, base: float, dtype: torch.dtype):
    """cos, sin of angle(t, i) = t·base^(−2i/dim) (fp32), cast to the activation dtype.

    positions: [B, T] → cos, sin: [B, T, dim/2]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim))
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    angles = positions.to(ct)[..., None] * inv_freq.to(ct)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """GPT-NeoX rotate-half: [x1·cos − x2·sin | x1·sin + x2·cos] per head. x: [B, T, H, D]; cos/sin: [B, T, D/2]."""
    ct = _compute_dtype(x.dtype)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].to(ct), x[..., half:].to(ct)
    c, s = cos[:, :, None].to(ct), sin[:, :, None].to(ct)
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).to(x.dtype)


class GatedMLP(nn.Module):
    """down(silu(gate(u)) ⊙ up(u)); the product is formed in fp32 and rounded once before `down_proj`."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        ct = _compute_dtype(x.dtype)
        return self.down_proj((F.silu(gate.to(ct)) * up.to(ct)).to(x.dtype))


class LowRankFastWeight(nn.Module):
    """Per-head initial fast weight w_left @ w_right + 0.5·I (parameter dtype). Shapes [H, out, r] and [H, r, in]."""

    def __init__(self, num_heads: int, out_features: int, in_features: int, rank: int):
        super().__init__()
        self.w_left = nn.Parameter(torch.empty(num_heads, out_features, rank))
        self.w_right = nn.Parameter(torch.empty(num_heads, rank, in_features))

    def forward(self) -> torch.Tensor:
        w = self.w_left @ self.w_right
        eye = torch.eye(w.shape[-2], w.shape[-1], dtype=w.dtype, device=w.device)
        return w + 0.5 * eye
