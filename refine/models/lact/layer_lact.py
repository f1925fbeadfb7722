"""The LaCT token mixer (`LaCTSWIGLULayer`): sliding-window attention + large-chunk SwiGLU fast weights sharing one
QKV projection and one output projection (spec lact-model.md §4.3). Parameter names match the published checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from refine.models.lact.attention import (
    cached_sliding_window_attention,
    flash_attn_available,
    flash_sliding_window_attention,
    sliding_window_attention,
)
from refine.models.lact.cache import LaCTCache, LaCTLayerCache, LaCTSegment, open_chunk, ttt_decode_step
from refine.models.lact.configuration_lact import LaCTConfig
from refine.models.lact.continuation import ttt_continue
from refine.models.lact.modules import LowRankFastWeight, RMSNorm, apply_rotary, rotary_cos_sin
from refine.models.lact.ttt_ops import FastWeightState, block_causal_lact_swiglu, l2_norm


def inv_softplus(x: float) -> float:
    """softplus⁻¹(x) = ln(eˣ − 1); the rate bias so that a zero projection gives η = x."""
    return math.log(math.expm1(x))


BASE_LR = 1e-3
BASE_LR_INV = inv_softplus(BASE_LR)


class LaCTSWIGLULayer(nn.Module):
    """Sliding-window attention + fast-weight (TTT) branch; output = o_proj(attention + gated TTT)."""

    def __init__(self, config: LaCTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        dim = config.hidden_size
        self.num_attn_heads, self.head_dim = config.num_attn_heads, config.head_dim
        self.num_fw_heads, self.fw_head_dim, self.fw_hidden_dim = (
            config.num_lact_heads, config.fw_head_dim, config.fw_hidden_dim
        )
        heads, d_in, d_h = self.num_fw_heads, self.fw_head_dim, self.fw_hidden_dim

        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        if config.attn_qk_norm:
            self.q_norm = RMSNorm(dim, eps=1e-5)
            self.k_norm = RMSNorm(dim, eps=1e-5)
        if config.w0_w2_low_rank > 0:
            self.w0 = LowRankFastWeight(heads, d_h, d_in, config.w0_w2_low_rank)
            self.w2 = LowRankFastWeight(heads, d_h, d_in, config.w0_w2_low_rank)
        else:
            self.w0 = nn.Parameter(torch.empty(heads, d_h, d_in))
            self.w2 = nn.Parameter(torch.empty(heads, d_h, d_in))
        self.w1 = nn.Parameter(torch.empty(heads, d_in, d_h))
        self.lr_proj = nn.Linear(dim, 3 * config.lr_dim * heads)
        self.qk_scale = nn.Parameter(torch.ones(dim, 2))
        self.qk_offset = nn.Parameter(torch.zeros(dim, 2))
        if config.learnable_ttt_scale:
            self.ttt_scale_proj = nn.Linear(dim, heads)
        self.ttt_norm = RMSNorm(d_in, eps=1e-5)
        if config.use_momentum:
            self.momentum_proj = nn.Sequential(nn.Linear(dim, heads), nn.Sigmoid())

    # ---------------------------------------------------------------------------------------------------------
    def initial_fast_weights(self, batch: int):
        """W0, W1, W2 initial values repeated over the batch: [batch·H, ·, ·] (rebuilt on every forward)."""
        w0 = self.w0() if isinstance(self.w0, LowRankFastWeight) else self.w0
        w2 = self.w2() if isinstance(self.w2, LowRankFastWeight) else self.w2
        weights = [w.repeat(batch, 1, 1) for w in (w0, self.w1, w2)]
        if self.config.fp32_states:
            weights = [w.float() for w in weights]
        return weights

    def _heads_first(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, H·d] → [B·H, T, d]."""
        batch, length = x.shape[:2]
        return x.view(batch, length, self.num_fw_heads, -1).transpose(1, 2).reshape(batch * self.num_fw_heads, length, -1)

    def _heads_last(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """[B·H, T, d] → [B, T, H·d]."""
        length = x.shape[1]
        return x.view(batch, self.num_fw_heads, length, -1).transpose(1, 2).reshape(batch, length, -1)

    def _rope(self, x: torch.Tensor, cos, sin) -> torch.Tensor:
        """RoPE over attention-head groups of a [B, T, D] tensor."""
        batch, length, dim = x.shape
        return apply_rotary(x.view(batch, length, self.num_attn_heads, self.head_dim), cos, sin).view(batch, length, dim)

    def _use_flash(self, x: torch.Tensor) -> bool:
        return (
            self.config.lact_backend == "auto"
            and x.is_cuda
            and x.dtype in (torch.float16, torch.bfloat16)
            and flash_attn_available()
        )

    # ---------------------------------------------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, segment: LaCTSegment, cache: LaCTCache | None = None):
        cfg = self.config
        batch, length, dim = hidden_states.shape
        layer_cache = None if cache is None else cache.layer_caches[self.layer_idx]
        q, k, v = self.qkv(hidden_states).chunk(3, dim=-1)
        if cfg.attn_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        # The TTT branch works on rescaled copies; attention uses q, k, v as projected.
        fq = q * self.qk_scale[:, 0] + self.qk_offset[:, 0]
        fk = k * self.qk_scale[:, 1] + self.qk_offset[:, 1]
        fv = v

        cos, sin = rotary_cos_sin(segment.rope_pos, self.head_dim, cfg.rope_theta, hidden_states.dtype)
        shape = (batch, length, self.num_attn_heads, self.head_dim)
        qa, ka = apply_rotary(q.view(shape), cos, sin), apply_rotary(k.view(shape), cos, sin)
        va = v.view(shape)
        valid = segment.valid
        if layer_cache is not None:
            q_valid = torch.ones_like(segment.rank, dtype=torch.bool) if valid is None else valid
            keys = torch.cat([layer_cache.key, ka], dim=1)
            values = torch.cat([layer_cache.value, va], dim=1)
            k_rank = torch.cat([layer_cache.key_rank, segment.rank], dim=1)
            k_valid = torch.cat([layer_cache.key_valid, q_valid], dim=1)
            attn = cached_sliding_window_attention(qa, keys, values, segment.rank, k_rank, q_valid, k_valid,
                                                   cfg.window_size)
            layer_cache.append_keys(ka, va, segment.rank, q_valid, segment.next_rank, cfg.window_size)
        elif self._use_flash(hidden_states):
            attn = flash_sliding_window_attention(qa, ka, va, valid, cfg.window_size)
        else:
            attn = sliding_window_attention(qa, ka, va, valid, cfg.window_size)
        attn = attn.reshape(batch, length, dim)

        ttt = self._ttt_branch(hidden_states, fq, fk, fv, cos, sin, segment, cache, layer_cache, ka, va)
        return self.o_proj(attn + ttt)

    def _ttt_branch(self, h, fq, fk, fv, cos, sin, segment, cache, layer_cache, ka, va):
        cfg = self.config
        batch, length, _ = h.shape
        if cfg.qkv_silu:
            fq, fk = F.silu(fq), F.silu(fk)
            if not cfg.no_v_silu:
                fv = F.silu(fv)
        fq, fk = l2_norm(self._heads_first(fq)), l2_norm(self._heads_first(fk))
        fv = self._heads_first(fv)
        if not cfg.ttt_nope:  # same rotary as attention, over the attention-head groups
            fq = self._heads_first(self._rope(self._heads_last(fq, batch), cos, sin))
            fk = self._heads_first(self._rope(self._heads_last(fk, batch), cos, sin))
        # η = softplus(z + softplus⁻¹(0.001)) in fp32; channel c of matrix m of head j is lr_proj output
        # 3r·j + r·m + c (r = lr_dim; r = 1 gives 3j + m).
        lr = F.softplus(self.lr_proj(h).float() + BASE_LR_INV)
        lr = self._heads_first(lr)  # [B·H, T, 3·r]
        mom = self._heads_first(self.momentum_proj(h)) if cfg.use_momentum else None

        if layer_cache is not None:
            take = segment.ttt_take
            take = torch.ones(batch, length, dtype=torch.bool, device=h.device) if take is None else take
            take = take.repeat_interleave(self.num_fw_heads, dim=0)
            y = None
            if length > 1 and bool(take.all()):  # a segment: the chunked recurrence, not token by token
                y = ttt_continue(layer_cache, fq, fk, fv, lr, mom, cfg.lact_chunk_size, cfg.use_muon)
            if y is None:
                ys = [
                    ttt_decode_step(layer_cache, fq[:, t : t + 1], fk[:, t : t + 1], fv[:, t : t + 1],
                                    lr[:, t : t + 1], None if mom is None else mom[:, t : t + 1], take[:, t],
                                    cfg.lact_chunk_size, cfg.use_muon)
                    for t in range(length)
                ]
                y = torch.cat(ys, dim=1)
        else:
            w0, w1, w2 = self.initial_fast_weights(batch)
            state = FastWeightState.initial(w0, w1, w2, cfg.use_momentum, cfg.ttt_prenorm)
            lengths = segment.ttt_lengths
            row_lengths = None if lengths is None else lengths.repeat_interleave(self.num_fw_heads)
            y, state = block_causal_lact_swiglu(state, fq, fk, fv, lr, mom, cfg.lact_chunk_size, cfg.use_muon,
                                                lengths=row_lengths)
            if cache is not None:
                self._fill_cache(cache, segment, state, fk, fv, lr, mom, ka, va, row_lengths)

        y = self.ttt_norm(y)
        y = self._heads_last(y, batch)
        if cfg.learnable_ttt_scale:
            gate = F.silu(self.ttt_scale_proj(h))  # [B, T, H]
            y = (y.view(batch, length, self.num_fw_heads, -1) * gate[..., None]).view(batch, length, -1)
        return y

    def _fill_cache(self, cache, segment, state, fk, fv, lr, mom, ka, va, row_lengths):
        """Store this layer's state after a whole-segment pass (the prefill of a cached generation)."""
        batch, length = ka.shape[:2]
        if row_lengths is None:
            row_lengths = torch.full((fk.shape[0],), length, dtype=torch.long, device=fk.device)
        buf_k, buf_v, buf_lr, buf_mom, count = open_chunk(fk, fv, lr, mom, row_lengths, self.config.lact_chunk_size)
        valid = segment.valid
        valid = torch.ones(batch, length, dtype=torch.bool, device=ka.device) if valid is None else valid.bool()
        layer_cache = LaCTLayerCache(
            key=ka, value=va, key_rank=segment.rank, key_valid=valid, fast=state,
            buf_k=buf_k, buf_v=buf_v, buf_lr=buf_lr, buf_mom=buf_mom, count=count,
        )
        layer_cache.trim(segment.next_rank, self.config.window_size)
        cache.layer_caches[self.layer_idx] = layer_cache
