"""CPU stand-ins for fla's causal depthwise convolution (`causal_conv1d`, `ShortConvolution.forward` / `.step`).

Cache layout as in fla 0.6.0: `[N, D, W]` holding the last W *inputs* (pre-activation) of each sequence, oldest
first, so the newest input sits in slot W-1; a sequence shorter than W keeps the older entries of the initial
cache (zeros without one). The single-token decoding `step` updates the cache **in place**, like fla's kernel.
Output = activation(conv + bias) + residual, computed in fp32 and returned in `x`'s dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from refine.models.cpu_kernels.banner import announce_once
from refine.models.cpu_kernels.varlen import VarlenLayout


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation in ("silu", "swish"):
        return F.silu(y)
    if activation is not None:
        raise ValueError(f"activation must be 'silu', 'swish' or None, got {activation!r}")
    return y


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool | None = False,
    activation: str | None = None,
    backend: str | None = "triton",
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.LongTensor | None = None,
    chunk_indices: torch.LongTensor | None = None,
    cp_context=None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fla's `causal_conv1d`: x `[B,T,D]`, weight `[D,W]`, cache `[N,D,W]` -> `(y [B,T,D], final_state | None)`.

    Differentiable in x, weight, bias, residual and the initial state, and through the final state.
    `backend` is accepted for signature compatibility and ignored.
    """
    announce_once()
    if cp_context is not None:
        raise NotImplementedError("context parallelism (cp_context) is not supported by the CPU kernels")
    if weight is None:
        raise ValueError("causal_conv1d on CPU needs `weight`")
    shape = x.shape
    if x.shape[-1] != weight.shape[0]:
        x = rearrange(x, "b t ... -> b t (...)")
    D, W = weight.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32

    layout = None
    if cu_seqlens is not None:
        if x.shape[0] != 1:
            raise ValueError(f"The batch size is expected to be 1 rather than {x.shape[0]} when using `cu_seqlens`.")
        layout = VarlenLayout.from_cu_seqlens(cu_seqlens, x.shape[1])
        xs = layout.pad(x.to(dtype))
        lengths = layout.lengths
    else:
        xs = x.to(dtype)
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
    N = xs.shape[0]
    if initial_state is not None and tuple(initial_state.shape) != (N, D, W):
        raise ValueError(f"initial_state must be [N, D, W] = {(N, D, W)}, got {tuple(initial_state.shape)}")

    history = xs.new_zeros(N, D, W) if initial_state is None else initial_state.to(dtype)
    full = torch.cat([history, xs.transpose(1, 2)], dim=-1)  # [N, D, W + T]
    with torch.autocast(device_type=x.device.type, enabled=False):  # fp32 even inside autocast, as fla
        y = F.conv1d(full, weight.to(dtype).unsqueeze(1), None if bias is None else bias.to(dtype), groups=D)
    y = _activate(y[..., 1:].transpose(1, 2), activation)  # drop the output that ends on the cache's last slot
    if layout is not None:
        y = layout.unpad(y)
    if residual is not None:
        y = y + residual.reshape(y.shape).to(dtype)

    final_state = None
    if output_final_state:
        # the W inputs that end at each sequence's last token, in `full` coordinates [len, len + W)
        index = (lengths[:, None] + torch.arange(W, device=x.device))[:, None, :].expand(N, D, W)
        final_state = full.gather(-1, index).to(x.dtype)
    return y.to(x.dtype).view(shape), final_state


def short_conv_forward(
    self,
    x: torch.Tensor,
    residual: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    cache: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    chunk_indices: torch.LongTensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`fla.modules.ShortConvolution.forward` on CPU (same dispatch: no-grad single-token calls go to `step`)."""
    B, T, *_ = x.shape
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    if mask is not None:
        if cu_seqlens is not None:
            raise ValueError("`mask` and `cu_seqlens` cannot be provided at the same time")
        x = x * mask.unsqueeze(-1)
    if not torch.is_grad_enabled() and B * T == N and (cu_seqlens is None or bool((cu_seqlens.diff() == 1).all())):
        return self.step(x=x, residual=residual, cache=cache, output_final_state=output_final_state,
                         cu_seqlens=cu_seqlens)
    return causal_conv1d(
        x=x,
        weight=rearrange(self.weight, "d 1 w -> d w"),
        bias=self.bias,
        residual=residual,
        initial_state=cache,
        output_final_state=output_final_state,
        activation=self.activation,
        cu_seqlens=cu_seqlens,
    )


def short_conv_step(
    self,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    cache: torch.Tensor | None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`ShortConvolution.step`: one token per sequence, x `[N,1,D]` or `[1,N,D]`; shifts `cache` in place."""
    announce_once()
    B, _, D, W = *x.shape, self.kernel_size[0]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    if cache is None:
        cache = x.new_zeros(N, D, W)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x_t = x.reshape(N, D)
    window = torch.cat([cache[..., 1:].to(dtype), x_t.to(dtype)[..., None]], dim=-1)  # [N, D, W]
    with torch.no_grad():
        cache.copy_(window)
    y = (window * rearrange(self.weight, "d 1 w -> d w").to(dtype)).sum(-1)
    if self.bias is not None:
        y = y + self.bias.to(dtype)
    y = _activate(y, self.activation)
    if residual is not None:
        y = y + residual.reshape(N, D).to(dtype)
    return y.to(x.dtype).view(x.shape), (cache if output_final_state else None)
