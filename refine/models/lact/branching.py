"""Branching off a LaCT decoding cache (the LaCT side of `refine.models.state_branching`, fast NSP mode).

A LaCT layer's state after a prefix is its `LaCTLayerCache`: the fast weights after the last closed chunk, the
open chunk's keys/values/rates/momentum, and the sliding window's keys and values with their ranks. Only with
`lact_exact_padding=True` does a branch off the document's state equal the faithful re-left-padded prefix (the
official padding shifts chunk boundaries and RoPE positions, spec Q7/Q18); `refine.models.state_branching`
refuses the fast mode otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from refine.models.lact.cache import LaCTCache, LaCTLayerCache
from refine.models.lact.ttt_ops import FastWeightState


@dataclass
class LaCTSnapshot:
    """A LaCT cache's per-layer states and per-row real-token counts at one point of a forward."""

    layers: list[LaCTLayerCache]
    valid_count: torch.Tensor
    seen_tokens: int
    num_lact_heads: int


def _map_state(state: FastWeightState, fn) -> FastWeightState:
    return replace(state, **{key: fn(value) for key, value in state.tensors().items()})


def _copy_layer(layer: LaCTLayerCache, fn) -> LaCTLayerCache:
    values = {}
    for field in fields(layer):
        value = getattr(layer, field.name)
        if isinstance(value, FastWeightState):
            value = _map_state(value, fn)
        elif isinstance(value, torch.Tensor):
            value = fn(value)
        values[field.name] = value
    return LaCTLayerCache(**values)


def lact_snapshot(cache: LaCTCache, *, detach_clone: bool) -> LaCTSnapshot:
    """The cache's states now. Later forwards rebind the cache's tensors rather than change them (the multi-token
    path, `lact.continuation`), so references suffice with gradients on; without, the tensors are copied because a
    single-token decoding step writes its open-chunk buffer in place."""
    fn = (lambda t: t.detach().clone()) if detach_clone else (lambda t: t)
    return LaCTSnapshot([_copy_layer(layer, fn) for layer in cache.layer_caches], fn(cache.valid_count),
                        cache.seen_tokens, cache.num_lact_heads)


def _left_pad(tensors: Sequence[torch.Tensor], value) -> torch.Tensor:
    """Concatenate [1+, S_i, ...] tensors along the batch after left-padding dim 1 to the longest."""
    longest = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        missing = longest - t.shape[1]
        if missing:
            pad = [0, 0] * (t.dim() - 2) + [missing, 0]
            t = F.pad(t, pad, value=value)
        padded.append(t)
    return torch.cat(padded, dim=0)


def _cat_optional(values):
    return None if values[0] is None else torch.cat(values, dim=0)


def lact_branch_cache(snapshots: Sequence[LaCTSnapshot]) -> LaCTCache:
    """A new `LaCTCache` whose batch row i continues from snapshots[i] (new tensors: decoding into it never
    touches a snapshot; gradients flow back into each). Window keys of different lengths are left-padded with
    invalid columns, which the cached attention masks out."""
    first = snapshots[0]
    cache = LaCTCache(len(first.layers), first.num_lact_heads)
    for index in range(len(first.layers)):
        layers = [s.layers[index] for s in snapshots]
        states = [layer.fast for layer in layers]
        fast = replace(states[0], **{key: torch.cat([getattr(s, key) for s in states], dim=0)
                                     for key in states[0].tensors()})
        cache.layer_caches[index] = LaCTLayerCache(
            key=_left_pad([layer.key for layer in layers], 0.0),
            value=_left_pad([layer.value for layer in layers], 0.0),
            key_rank=_left_pad([layer.key_rank for layer in layers], 0),
            key_valid=_left_pad([layer.key_valid for layer in layers], False),
            fast=fast,
            buf_k=torch.cat([layer.buf_k for layer in layers]),
            buf_v=torch.cat([layer.buf_v for layer in layers]),
            buf_lr=torch.cat([layer.buf_lr for layer in layers]),
            buf_mom=_cat_optional([layer.buf_mom for layer in layers]),
            count=torch.cat([layer.count for layer in layers]),
        )
    cache.valid_count = torch.cat([s.valid_count for s in snapshots])
    cache.seen_tokens = max(s.seen_tokens for s in snapshots)
    return cache
