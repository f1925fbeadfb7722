"""A Mamba2 mixer forward on PyTorch ops that continues from a cache over any number of tokens, and fla's gated
RMSNorm on its own PyTorch reference.

fla 0.6.0's `Mamba2.torch_forward` (its path without mamba-ssm) reads a document from a zero state only: with a
cache it takes exactly one token (`Mamba2 cached decoding only supports a single new token per step`), and its
SiLU and gated norm call Triton kernels. The fast NSP mode reads a document in segments and branches several
tokens off a state, so `mamba2_forward` replaces it: same parameters, same cache layout (convolution cache
[N, conv_dim, W] holding the last W pre-activation inputs, oldest first, zero-filled; SSM state
[N, heads, head_dim, state_size], fp32), any length with or without a cache.

The scan is chunked: inside a chunk of L tokens the output is the masked quadratic form
y_t = sum_{s<=t} exp(a_{s+1} + ... + a_t) (C_t . B_s) dt_s x_s, between chunks the state carries over,
h <- exp(sum a) h + sum_s exp(a_{s+1} + ... + a_L) dt_s x_s B_s^T, with a_t = dt_t A (A < 0). Left pads (the
first segment's attention mask) are zeroed before the projection and around the convolution, as fla does, so
they add nothing to a zero state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refine.models.cpu_kernels.banner import announce_once


def rms_norm_gated_ref_forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """`RMSNormGated.forward` through fla's own PyTorch reference (`rms_norm_ref`) instead of its Triton kernel."""
    from fla.modules.norm.layernorm_gated import rms_norm_ref  # fla: imported with the module this patches

    return rms_norm_ref(x, self.weight, self.bias, z=z, eps=self.eps, group_size=self.group_size,
                        norm_before_gate=self.norm_before_gate)


def _chunk_scan(x, dt, log_decay, b, c, state, chunk: int):
    """y [N, T, H, P] and the final state [N, H, P, S] of h_t = exp(a_t) h_{t-1} + dt_t x_t b_t^T, y_t = h_t c_t,
    from `state`, in chunks of `chunk` tokens (fp32)."""
    n, t = x.shape[:2]
    pad = (-t) % chunk
    if pad:  # zero dt and decay: padded steps leave the state as it is
        x, dt, log_decay, b, c = (F.pad(v, (0, 0) * (v.dim() - 2) + (0, pad)) for v in (x, dt, log_decay, b, c))
    outs = []
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()
    for lo in range(0, t + pad, chunk):
        xs, dts, bs, cs = x[:, lo:lo + chunk], dt[:, lo:lo + chunk], b[:, lo:lo + chunk], c[:, lo:lo + chunk]
        cum = log_decay[:, lo:lo + chunk].cumsum(dim=1)  # [N, L, H], inclusive
        gap = (cum[:, :, None] - cum[:, None, :]).masked_fill(~causal[None, :, :, None], float("-inf"))
        weights = torch.einsum("nthk,nshk->ntsh", cs, bs) * gap.exp() * dts[:, None]  # [N, t, s, H]
        y = torch.einsum("ntsh,nshp->nthp", weights, xs)
        y = y + torch.einsum("nthk,nhpk->nthp", cs, state) * cum.exp()[..., None]
        to_end = (cum[:, -1:] - cum).exp() * dts  # [N, L, H]
        state = state * cum[:, -1].exp()[..., None, None] + torch.einsum("nsh,nshp,nshk->nhpk", to_end, xs, bs)
        outs.append(y)
    return torch.cat(outs, dim=1)[:, :t], state


def mamba2_forward(self, input_states, last_state=None, use_cache=False, attention_mask=None):
    """Replacement of fla's `Mamba2.torch_forward`: (output, convolution cache, SSM state)."""
    announce_once()
    n, t, _ = input_states.shape
    dtype = input_states.dtype
    mask = attention_mask if attention_mask is not None and attention_mask.shape == (n, t) else None
    if mask is not None:
        input_states = input_states * mask[..., None].to(dtype)
    projected = self.in_proj(input_states)
    d_mlp = (projected.shape[-1] - 2 * self.intermediate_size - 2 * self.n_groups * self.ssm_state_size
             - self.num_heads) // 2
    _, _, gate, xbc, dt = projected.split([d_mlp, d_mlp, self.intermediate_size, self.conv_dim, self.num_heads], -1)
    if mask is not None:
        xbc = xbc * mask[..., None].to(dtype)

    width = self.conv_kernel_size
    previous = (last_state["conv_state"] if last_state is not None
                else xbc.new_zeros(n, self.conv_dim, width))
    window = torch.cat([previous.to(xbc.dtype), xbc.transpose(1, 2)], dim=2)  # [N, D, W + T]
    conv = F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)[..., -t:]
    xbc = F.silu(conv.transpose(1, 2))
    if mask is not None:
        xbc = xbc * mask[..., None].to(dtype)
    new_conv = window[..., -width:] if use_cache or last_state is not None else None

    groups_state = self.n_groups * self.ssm_state_size
    x, b, c = xbc.split([self.intermediate_size, groups_state, groups_state], dim=-1)
    heads, per_group = self.num_heads, self.num_heads // self.n_groups
    dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(self.dt_limit[0], self.dt_limit[1])
    a = -torch.exp(self.A_log.float())
    b = b.float().reshape(n, t, self.n_groups, -1).repeat_interleave(per_group, dim=2)
    c = c.float().reshape(n, t, self.n_groups, -1).repeat_interleave(per_group, dim=2)
    x = x.float().reshape(n, t, heads, self.head_dim)
    state = (last_state["recurrent_state"].float() if last_state is not None
             else x.new_zeros(n, heads, self.head_dim, self.ssm_state_size))
    y, state = _chunk_scan(x, dt, dt * a, b, c, state, self.chunk_size)
    y = (y + x * self._get_D(expand_to_head_dim=True).float()).reshape(n, t, -1)
    if self.rmsnorm:
        y = self.norm(y, gate)
    else:
        y = y * F.silu(gate.float())
    return self.out_proj(y.to(dtype)), new_conv, state
