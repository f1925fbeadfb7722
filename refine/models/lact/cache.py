"""Decoding cache of LaCT: sliding-window K/V + fast-weight state + position offsets, so that each new token costs
O(window + chunk) instead of re-running the prefix (upstream re-runs everything, spec Q31).

The cache reproduces the no-cache outputs: it keeps the fast weights after every *closed* chunk plus the K, V,
rates and momentum of the open chunk. When a token arrives and the open chunk is full, the chunk is used for an
update first (upstream updates chunk n only once a token after it exists), then the token is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from refine.models.lact.ttt_ops import FastWeightState, fast_weight_apply, fast_weight_update


@dataclass
class LaCTSegment:
    """Where the tokens of one forward call sit (computed once per call by the model, shared by all layers).

    rope_pos: RoPE positions [B, T]. rank: real-token rank used by the attention window [B, T].
    valid: attention-mask validity [B, T] (None: all real). ttt_lengths: per-row number of leading tokens that feed
    the fast weights, whole-segment path only (None: all T). ttt_take: which tokens feed the fast weights, cached
    path only (None: all). next_rank: number of real tokens per row after this segment [B].
    """

    rope_pos: torch.Tensor
    rank: torch.Tensor
    next_rank: torch.Tensor
    valid: torch.Tensor | None = None
    ttt_lengths: torch.Tensor | None = None
    ttt_take: torch.Tensor | None = None


@dataclass
class LaCTLayerCache:
    """One layer's decoding state. Attention: post-RoPE keys/values [B, S, H, D] with each key's rank and
    validity [B, S]. Fast weights: state per (batch, head) row plus the open chunk's buffers [n, C, ·]."""

    key: torch.Tensor
    value: torch.Tensor
    key_rank: torch.Tensor
    key_valid: torch.Tensor
    fast: FastWeightState
    buf_k: torch.Tensor
    buf_v: torch.Tensor
    buf_lr: torch.Tensor
    buf_mom: torch.Tensor | None
    count: torch.Tensor  # [n] tokens in the open chunk

    def append_keys(self, key, value, rank, valid, next_rank, window):
        """Add new keys and drop the leading columns no future query can see (rank < next_rank − window + 1)."""
        self.key = torch.cat([self.key, key], dim=1)
        self.value = torch.cat([self.value, value], dim=1)
        self.key_rank = torch.cat([self.key_rank, rank], dim=1)
        self.key_valid = torch.cat([self.key_valid, valid], dim=1)
        self.trim(next_rank, window)

    def trim(self, next_rank, window):
        needed = self.key_valid & (self.key_rank >= (next_rank[:, None] - window + 1))
        used_columns = needed.any(dim=0).nonzero()
        first = int(used_columns[0]) if used_columns.numel() else self.key.shape[1]
        if first > 0:
            self.key, self.value = self.key[:, first:], self.value[:, first:]
            self.key_rank, self.key_valid = self.key_rank[:, first:], self.key_valid[:, first:]

    def rows(self, index: torch.Tensor, heads: int) -> None:
        """Keep/reorder batch rows (beam search, batch selection); fast-weight rows are batch×heads."""
        fast_index = (index[:, None] * heads + torch.arange(heads, device=index.device)).flatten()
        self.key, self.value = self.key[index], self.value[index]
        self.key_rank, self.key_valid = self.key_rank[index], self.key_valid[index]
        self.fast = self.fast.select(fast_index)
        self.buf_k, self.buf_v, self.buf_lr = self.buf_k[fast_index], self.buf_v[fast_index], self.buf_lr[fast_index]
        if self.buf_mom is not None:
            self.buf_mom = self.buf_mom[fast_index]
        self.count = self.count[fast_index]


def open_chunk(k, v, lr, mom, lengths, chunk_size):
    """The open (not yet used for an update) chunk after a whole-segment pass: tokens [s_r, lengths[r]) with
    s_r = C·⌊(lengths[r] − 1)/C⌋, padded to C. Returns buffers [n, C, ·] and counts [n]."""
    total = k.shape[1]
    starts = ((lengths - 1).clamp(min=0) // chunk_size) * chunk_size
    index = (starts[:, None] + torch.arange(chunk_size, device=k.device)).clamp(max=max(total - 1, 0))

    def take(x):
        return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))

    return take(k), take(v), take(lr), None if mom is None else take(mom), lengths - starts


def _write(buffer, rows, pos, values):
    if torch.is_grad_enabled():  # keep autograd history intact if someone decodes with gradients
        return buffer.index_put((rows, pos), values)
    buffer[rows, pos] = values
    return buffer


def ttt_decode_step(cache: LaCTLayerCache, q, k, v, lr, mom, take, chunk_size, use_muon):
    """One token through the fast weights. q/k/v: [n, 1, d]; lr: [n, 1, 3·lr_dim]; mom: [n, 1, 1] or None;
    take: [n] bool (tokens that feed the fast weights). Returns y [n, 1, d_out]."""
    full = (cache.count == chunk_size) & take
    if bool(full.any()):
        rows = full.nonzero().squeeze(-1)
        updated = fast_weight_update(
            cache.fast.select(rows), cache.buf_k[rows], cache.buf_v[rows], cache.buf_lr[rows],
            None if cache.buf_mom is None else cache.buf_mom[rows], use_muon,
        )
        cache.fast = cache.fast.scattered(rows, updated)
        cache.count = cache.count.masked_fill(full, 0)
    y = fast_weight_apply(cache.fast.w0, cache.fast.w1, cache.fast.w2, q)
    if bool(take.any()):
        rows = take.nonzero().squeeze(-1)
        pos = cache.count[rows]
        cache.buf_k = _write(cache.buf_k, rows, pos, k[rows, 0].to(cache.buf_k.dtype))
        cache.buf_v = _write(cache.buf_v, rows, pos, v[rows, 0].to(cache.buf_v.dtype))
        cache.buf_lr = _write(cache.buf_lr, rows, pos, lr[rows, 0].to(cache.buf_lr.dtype))
        if cache.buf_mom is not None:
            cache.buf_mom = _write(cache.buf_mom, rows, pos, mom[rows, 0].to(cache.buf_mom.dtype))
        cache.count = cache.count + take.long()
    return y


class LaCTCache(Cache):
    """Per-layer `LaCTLayerCache` plus the position offsets shared by all layers.

    seen_tokens: tokens consumed per row so far (pads included). valid_count: real tokens per row [B].
    """

    def __init__(self, num_layers: int, num_lact_heads: int):
        super().__init__(layers=[])
        self.layer_caches: list[LaCTLayerCache | None] = [None] * num_layers
        self.num_lact_heads = num_lact_heads
        self.seen_tokens = 0
        self.valid_count: torch.Tensor | None = None

    @property
    def is_empty(self) -> bool:
        return self.seen_tokens == 0

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return not self.is_empty

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1

    def __len__(self) -> int:
        return len(self.layer_caches)

    def __repr__(self) -> str:
        return f"LaCTCache(layers={len(self)}, seen_tokens={self.seen_tokens})"

    def reset(self) -> None:
        self.layer_caches = [None] * len(self.layer_caches)
        self.seen_tokens = 0
        self.valid_count = None

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for layer in self.layer_caches:
            if layer is not None:
                layer.rows(indices, self.num_lact_heads)
        if self.valid_count is not None:
            self.valid_count = self.valid_count[indices]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.valid_count is not None:
            index = torch.arange(self.valid_count.shape[0], device=self.valid_count.device)
            self.batch_select_indices(index.repeat_interleave(repeats))

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("LaCTCache cannot be cropped: fast-weight updates are not reversible")
