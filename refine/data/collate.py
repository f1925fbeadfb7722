"""Batch collation: verl's own `collate_fn` (tensors stacked, everything else a numpy object array)."""

from __future__ import annotations


def collate_fn(data_list: list[dict]) -> dict:
    """verl's `verl.utils.dataset.rl_dataset.collate_fn` (imported lazily: it pulls in `datasets`)."""
    from verl.utils.dataset.rl_dataset import collate_fn as verl_collate_fn

    return verl_collate_fn(data_list)
