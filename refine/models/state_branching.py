"""Branching off a recurrent model's state: the model side of the fast NSP mode (`refine.nsp_mode=fast`).

A DeltaNet / GatedDeltaNet layer's fla cache entry (delta-rule `recurrent_state` [N, H, K, V] and the three
short-convolution caches [N, D, W]) summarises everything the layer has read. So a rollout off position r of a
document can start from the cache taken after the document's tokens [0, r) instead of re-encoding the prefix.

- `snapshot(cache)` takes one cache's per-layer states (references; the tensors stay in the autograd graph).
- `branch_cache(snapshots)` stacks several snapshots along the batch dimension into a fresh fla `Cache` whose
  tensors are new (torch.cat), so decoding into it never touches a snapshot (fla's single-token convolution step
  updates its cache in place) while gradients still flow back into every snapshot.

Only the fla models whose whole state is such a cache qualify (`BRANCHABLE_MODEL_TYPES`), and LaCT, whose decoding
cache holds its whole state (`refine.models.lact.branching`), when `lact_exact_padding=True`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# model_type -> the fla layer state keys that make up its whole per-layer state
BRANCHABLE_MODEL_TYPES = ("delta_net", "gated_deltanet")
LACT_MODEL_TYPE = "lact_swiglu"
_STATE_KEYS = ("recurrent_state", "conv_state")


def branch_refusal(model_type: str | None, lact_exact_padding: bool = False) -> str | None:
    """Why `model_type` cannot branch off states (None when it can): the one home of that rule."""
    if model_type in BRANCHABLE_MODEL_TYPES:
        return None
    if model_type == LACT_MODEL_TYPE:
        if lact_exact_padding:
            return None
        return ("with LaCT's official padding the re-left-padded prefixes shift chunk boundaries and RoPE positions "
                "(spec Q7/Q18), so a branch off the document's state would not equal the faithful rollout; set "
                "actor_rollout_ref.model.override_config.lact_exact_padding=True")
    return (f"model_type {model_type!r} has no recurrent state to branch from (supported: "
            f"{(*BRANCHABLE_MODEL_TYPES, LACT_MODEL_TYPE)}, LaCT with lact_exact_padding=True)")


def check_branchable(model) -> None:
    """ValueError naming the model type when `model` cannot serve the fast NSP mode."""
    config = getattr(model, "config", None)
    reason = branch_refusal(getattr(config, "model_type", None), bool(getattr(config, "lact_exact_padding", False)))
    if reason is not None:
        raise ValueError(f"refine.nsp_mode=fast: {reason}; use refine.nsp_mode=faithful")


def snapshot(cache, *, detach_clone: bool = False):
    """Per-layer {recurrent_state, conv_state} of an fla cache after a forward with `use_cache=True` (a LaCT cache:
    `refine.models.lact.branching.LaCTSnapshot`).

    `detach_clone=True` copies the tensors (no-grad passes, where a later single-token step could update a shared
    convolution cache in place); otherwise the snapshot references the live, differentiable tensors.
    """
    from refine.models.lact import LaCTCache

    if isinstance(cache, LaCTCache):
        from refine.models.lact.branching import lact_snapshot

        return lact_snapshot(cache, detach_clone=detach_clone)
    states = []
    for layer_state in cache:
        entry = {}
        for key in _STATE_KEYS:
            value = layer_state.get(key)
            if detach_clone and value is not None:
                value = _map(value, lambda t: t.detach().clone())
            entry[key] = value
        states.append(entry)
    return states


def _map(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map(v, fn) for v in value)
    if value is None:
        return None
    raise TypeError(f"unexpected cache state of type {type(value).__name__}")


def _stack(values: Sequence):
    first = values[0]
    if first is None:
        if any(v is not None for v in values):
            raise ValueError("snapshots disagree on which states exist")
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(list(values), dim=0)
    return type(first)(_stack([v[i] for v in values]) for i in range(len(first)))


def branch_cache(snapshots: Sequence[list[dict]], seen_tokens: int = 0):
    """A new fla `Cache` whose batch row i continues from `snapshots[i]` (each a `snapshot` of batch size 1 or
    more; rows are concatenated in order)."""
    from fla.models.utils import Cache

    from refine.models.lact.branching import LaCTSnapshot, lact_branch_cache

    if not snapshots:
        raise ValueError("branch_cache needs at least one snapshot")
    if isinstance(snapshots[0], LaCTSnapshot):
        return lact_branch_cache(snapshots)
    n_layers = len(snapshots[0])
    if any(len(s) != n_layers for s in snapshots):
        raise ValueError("snapshots have different numbers of layers")
    cache = Cache(seen_tokens=seen_tokens)
    for layer in range(n_layers):
        stacked = {key: _stack([s[layer][key] for s in snapshots]) for key in _STATE_KEYS}
        cache.update(**stacked, layer_idx=layer, offset=0)
    return cache
