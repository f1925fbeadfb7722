"""Branching off a model's decoding state: the model side of the fast NSP mode (`refine.nsp_mode=fast`).

A recurrent layer's fla cache entry (e.g. DeltaNet's delta-rule `recurrent_state` [N, H, K, V] and its three
short-convolution caches [N, D, W]) summarises everything the layer has read. So a rollout off position r of a
document can start from the cache taken after the document's tokens [0, r) instead of re-encoding the prefix.

- `snapshot(module, cache)` takes one cache's per-layer states (references; the tensors stay in the autograd graph).
- `branch_cache(module, snapshots)` stacks several snapshots along the batch dimension into a fresh cache whose
  tensors are new (torch.cat), so decoding into it never touches a snapshot (fla's single-token convolution step
  updates its cache in place) while gradients still flow back into every snapshot.
- Hybrid fla configs (softmax-attention layers, the `attn` config key) also branch their keys/values: the state at
  r - 1 is the cached keys and values of doc[:r-1], left-padded to the longest row and masked (`branch_mask`);
  gradients flow into the cached keys and values.

Which cache a model keeps, which of its entries make up the state (`Family.state_keys`) and whether the family can
branch at all is the family table's (`refine.models.families`); LaCT's cache has its own functions
(`refine.models.lact.branching`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from refine.models.families import FLA_CACHE, KV_CACHE, LACT_CACHE, config_view, family_for, family_of


def fast_mode_refusal(config: Mapping) -> str | None:
    """Why a model with this config.json mapping cannot serve the fast NSP mode (None when it can): the one home of
    that rule. An unknown model type raises `UnknownFamily`."""
    return family_for(config.get("model_type")).fast_mode_refusal(config)


def check_branchable(model) -> None:
    """ValueError naming the model type when `model` cannot serve the fast NSP mode."""
    config = model.config
    reason = fast_mode_refusal(config_view(config))
    if reason is not None:
        raise ValueError(f"refine.nsp_mode=fast: model_type {config.model_type!r} ({family_of(config).name}): "
                         f"{reason}; use refine.nsp_mode=faithful")


def _family(module):
    family = family_of(module.config)
    if family.state not in (FLA_CACHE, LACT_CACHE, KV_CACHE):
        raise ValueError(f"model family {family.name!r} has no branchable state (refine.nsp_mode=faithful)")
    return family


@dataclass
class FlaSnapshot:
    """An fla cache's per-layer states (the family's `state_keys`) at one point of a forward, and, when a layer keeps
    softmax-attention keys/values (hybrid configs), which cached columns hold real tokens ([B, T], 1 = real)."""

    layers: list[dict]
    valid: torch.Tensor | None = None

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, layer):
        return self.layers[layer]


def attends_to_cache(module) -> bool:
    """Whether some layer keeps a softmax-attention KV cache (a transformers decoder; fla's `attn` config key): its
    later segments and branches then need the attention mask of everything cached, so that left pads stay masked
    (and fla's rotary positions continue the document's)."""
    return family_of(module.config).state == KV_CACHE or bool(getattr(module.config, "attn", None))


def branch_positions(module, snapshots: Sequence, start: int, count: int) -> torch.Tensor | None:
    """[N, count] position ids of `count` new tokens, `start` tokens into the branches, for a transformers decoder
    (its positions count every cached column, pads included, so row i continues at its own cache length rather than
    at the longest row's); None for fla models, whose attention derives positions from the mask."""
    if family_of(module.config).state != KV_CACHE:
        return None
    lengths = torch.tensor([s.valid.shape[1] for s in snapshots for _ in range(s.valid.shape[0])])
    return (lengths[:, None] + start + torch.arange(count)).to(snapshots[0].valid.device)


def snapshot(module, cache, *, detach_clone: bool = False, valid: torch.Tensor | None = None):
    """Per-layer states (the family's `state_keys`) of `module`'s cache after a forward with `use_cache=True`: an
    `FlaSnapshot` (a LaCT cache: `refine.models.lact.branching.LaCTSnapshot`). `valid` [B, T]: the attention mask
    of the tokens read so far (kept when a layer caches keys/values; None: all real).

    `detach_clone=True` copies the tensors (no-grad passes, where a later single-token step could update a shared
    convolution cache in place); otherwise the snapshot references the live, differentiable tensors.
    """
    family = _family(module)
    if family.state == LACT_CACHE:
        from refine.models.lact.branching import lact_snapshot

        return lact_snapshot(cache, detach_clone=detach_clone)
    # a transformers cache's keys/values [B, H, T, D], kept as fla keeps them ([B, T, ...]: left-padded on dim 1)
    layer_states = ([{"attn_state": (layer.keys.transpose(1, 2), layer.values.transpose(1, 2))}
                     for layer in cache.layers] if family.state == KV_CACHE else cache)
    states = []
    for layer_state in layer_states:
        entry = {}
        for key in family.state_keys:
            value = layer_state.get(key)
            if detach_clone and value is not None:
                value = _map(value, lambda t: t.detach().clone())
            entry[key] = value
        states.append(entry)
    kv = next((e["attn_state"] for e in states if e.get("attn_state") is not None), None)
    if kv is None:
        return FlaSnapshot(states)
    if valid is None:
        valid = torch.ones(kv[0].shape[:2], dtype=torch.long, device=kv[0].device)
    return FlaSnapshot(states, valid.to(kv[0].device).long())


def _map(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map(v, fn) for v in value)
    if value is None:
        return None
    raise TypeError(f"unexpected cache state of type {type(value).__name__}")


def _stack(values: Sequence, *, left_pad: bool = False):
    """Concatenate along the batch; `left_pad`: [B, T, ...] tensors of different T are left-padded with zeros to
    the longest (attention keys/values, masked by `branch_mask`)."""
    first = values[0]
    if first is None:
        if any(v is not None for v in values):
            raise ValueError("snapshots disagree on which states exist")
        return None
    if isinstance(first, torch.Tensor):
        if left_pad:
            longest = max(v.shape[1] for v in values)
            values = [F.pad(v, (0, 0) * (v.dim() - 2) + (longest - v.shape[1], 0)) for v in values]
        return torch.cat(list(values), dim=0)
    return type(first)(_stack([v[i] for v in values], left_pad=left_pad) for i in range(len(first)))


def branch_mask(snapshots: Sequence) -> torch.Tensor | None:
    """[N, L] attention mask of the cache `branch_cache` builds from `snapshots` (None: no layer caches keys and
    values): each row's real cached columns, left-padded with zeros to the longest."""
    if not isinstance(snapshots[0], FlaSnapshot) or snapshots[0].valid is None:
        return None
    return _stack([s.valid for s in snapshots], left_pad=True)


def branch_cache(module, snapshots: Sequence, seen_tokens: int = 0):
    """A new cache of `module`'s kind whose batch row i continues from `snapshots[i]` (each a `snapshot` of batch
    size 1 or more; rows are concatenated in order)."""
    family = _family(module)
    if not snapshots:
        raise ValueError("branch_cache needs at least one snapshot")
    if family.state == LACT_CACHE:
        from refine.models.lact.branching import lact_branch_cache

        return lact_branch_cache(snapshots)
    if family.state == KV_CACHE:
        from transformers import DynamicCache  # transformers: only a decoder's branches build its cache

        pairs = [_stack([s[layer]["attn_state"] for s in snapshots], left_pad=True)
                 for layer in range(len(snapshots[0]))]
        return DynamicCache(ddp_cache_data=[(k.transpose(1, 2), v.transpose(1, 2)) for k, v in pairs])
    from fla.models.utils import Cache
    n_layers = len(snapshots[0])
    if any(len(s) != n_layers for s in snapshots):
        raise ValueError("snapshots have different numbers of layers")
    cache = Cache(seen_tokens=seen_tokens)
    for layer in range(n_layers):
        stacked = {key: _stack([s[layer][key] for s in snapshots], left_pad=key == "attn_state")
                   for key in family.state_keys}
        cache.update(**stacked, layer_idx=layer, offset=0)
    return cache
