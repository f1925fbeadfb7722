"""Up-front checks of `refine.nsp_mode=fast` (before Ray): a model that can branch off its recurrent state, and
mini-batches that never split a document's rollout rows (the fast update runs document by document)."""

from __future__ import annotations

import contextlib
import json
import os

from omegaconf import DictConfig

from refine.errors import config_error
from refine.nsp.update_plan import normalized_ppo_mini_batch_rows
from refine.settings import n_workers


def model_config_at(path: str) -> dict:
    """The local HF config.json at `path` as a dict ({} when there is none to read)."""
    config_file = os.path.join(str(path), "config.json")
    if not os.path.isfile(config_file):
        return {}
    with open(config_file, encoding="utf-8") as handle:
        return json.load(handle)


def check_fast_mode(rc, config: DictConfig) -> None:
    """ValueError (one line: key, value, fix) when the fast NSP mode cannot run this config."""
    if rc.nsp_mode != "fast":
        return
    model = config.actor_rollout_ref.model
    on_disk = model_config_at(model.path)
    if on_disk.get("model_type") is not None:
        # refine.models registers fla and LaCT on import (seconds): only a fast-mode run pays for it
        from refine.models.families import UnknownFamily, fast_family_names, family_for
        from refine.models.state_branching import fast_mode_refusal

        merged = {**on_disk, **(model.get("override_config") or {})}
        try:
            reason = fast_mode_refusal(merged)
        except UnknownFamily as exc:
            reason = str(exc)
        if reason is not None:
            family = on_disk["model_type"]
            with contextlib.suppress(UnknownFamily):
                family = f"{on_disk['model_type']} ({family_for(on_disk['model_type']).name} family)"
            config_error("refine.nsp_mode", "fast", f"model_type {family}: {reason} (the fast mode runs the "
                         f"families {', '.join(fast_family_names())})",
                         "use refine.nsp_mode=faithful for this model")
    w = n_workers(config)
    rows_per_doc = rc.n_chunks * rc.n_per_prefix if rc.n_chunks and rc.n_per_prefix else None
    for key, on, batch in (("data.train_batch_size", rc.ttt_ppo_update, config.data.get("train_batch_size")),
                           ("data.val_batch_size", rc.val_ttt_ppo_update, config.data.get("val_batch_size"))):
        if not on or batch is None or rows_per_doc is None:
            continue
        m_rows = normalized_ppo_mini_batch_rows(rc.mini_batch_size, n_chunks=rc.n_chunks, ttt_n=rc.n_per_prefix,
                                                world_size=w)
        mini = min(int(batch) // w * rows_per_doc, m_rows)
        if mini % rows_per_doc:
            config_error("refine.mini_batch_size", rc.mini_batch_size,
                  f"with {key}={batch} on {w} worker(s) a PPO mini-batch holds {mini} rollout rows, which splits a "
                  f"document's n_chunks * n_per_prefix = {rows_per_doc} rows across mini-batches (nsp_mode=fast "
                  "updates document by document)",
                  f"use a refine.mini_batch_size that is a multiple of {w} (the number of workers)")
