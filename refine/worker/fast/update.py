"""The combined NTP + PPO update of the fast NSP mode, one (NTP mini-batch, PPO mini-batch) pair at a time.

Per document: one forward with gradients over the document, segment by segment (`fast_ops.run_document`), and one
over its C * ttt_n branches (`fast_ops.branch_forward`); the NTP term is scaled sft_coef / GA_sft / (label count
of its NTP micro-batch) and the PPO term is split exactly along the official PPO micro-batches (token-mean x
ppo_coef / GA_ppo), so the summed objective is the faithful `model_ops.combined_backward` one; one backward per
document. The gradient reaches the prefix through the state snapshots (official Q25).

Rollouts made inside the update (`InlineRollout`): before the first optimiser step the weights are the rollout
weights, so the first pair's documents need no separate rollout pass. Their rollouts are decoded from the update's
own (detached) snapshots, the old log-probs are the update's log-probs (the PPO ratio is exactly 1, as it must be
before any step), and their advantages are computed per document (GRPO groups never cross documents). Only the
documents of later pairs are rolled out beforehand by `fast_ops.fast_rollout`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from refine.nsp.losses import IGNORE_INDEX, ppo_clip_loss
from refine.nsp.update_plan import CombinedUpdatePlan, MiniBatchPair
from refine.worker.fast.ops import (
    branch_forward,
    first_tokens_of,
    row_snapshots,
    run_document,
    shifted_labels,
    timed,
)


@dataclass
class InlineRollout:
    """How the first pair makes its own rollouts.

    decode(row snapshots, first tokens) -> responses [R, k] (sampled without gradients);
    score(rows, response hidden [R, k, H], responses) -> advantages [R, k] (and records the rewards).
    """

    decode: Callable
    score: Callable
    timing: dict[str, float] | None = None


def _micro_of(index: int, micro: tuple[slice, ...]) -> slice:
    return next(sl for sl in micro if sl.start <= index < sl.stop)


def _ppo_objective(old, new, advantages, rows: slice, pair: MiniBatchPair, plan: CombinedUpdatePlan):
    """This document's share of the pair's PPO loss: each micro-batch's token-mean split along its rows."""
    total = None
    for sl in pair.ppo_micro:
        lo, hi = max(sl.start, rows.start), min(sl.stop, rows.stop)
        if lo >= hi:
            continue
        part_new = new[lo - rows.start:hi - rows.start]
        part, _ = ppo_clip_loss(old[lo:hi], part_new, advantages[lo:hi], torch.ones_like(part_new))
        part = part * ((hi - lo) / (sl.stop - sl.start)) * plan.ppo_scale
        total = part if total is None else total + part
    return total


def fast_backward(module, docs: dict[str, torch.Tensor], ppo: dict[str, torch.Tensor], pair: MiniBatchPair,
                  plan: CombinedUpdatePlan, *, n_rows_per_doc: int, ttt_n: int, temperature: float,
                  mask_pads: bool, inline: InlineRollout | None = None, checkpoint: bool = False
                  ) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """Backward of one (NTP, PPO) mini-batch pair: the same objective as `model_ops.combined_backward`.

    docs: input_ids / attention_mask [B, S]; ppo: positions [B, C], responses, old_log_probs, advantages [N, k]
    (with `inline`, this pair's rows of the last three are written here). `checkpoint`: segment-level activation
    checkpointing of the document pass (`fast_ops.run_document`). Returns the raw NTP and pg losses per
    micro-batch and the per-micro-batch PPO metrics, as the faithful one (0-d tensors or floats: no host sync per
    document; the caller converts once).
    """
    ids, mask = docs["input_ids"], docs["attention_mask"]
    if pair.ppo.start != pair.sft.start * n_rows_per_doc or pair.ppo.stop != pair.sft.stop * n_rows_per_doc:
        raise ValueError(f"PPO rows {pair.ppo} do not cover exactly the documents {pair.sft} (fast mode needs "
                         "mini-batches that never split a document's rows)")
    labels = shifted_labels(ids, mask, mask_pads=mask_pads,
                            model_masks_pads=bool(getattr(module.config, "mask_pad_labels", False)))
    counts = {sl.start: int((labels[sl] != IGNORE_INDEX).sum()) for sl in pair.sft_micro}
    first = first_tokens_of(ids, ppo["positions"], ttt_n)
    new_lp = torch.empty_like(ppo["old_log_probs"])
    ntp_raw = {sl.start: torch.zeros(()) for sl in pair.sft_micro}
    for d in range(pair.sft.start, pair.sft.stop):
        micro = _micro_of(d, pair.sft_micro)
        positions = ppo["positions"][d].tolist()
        snaps, loss_sum = run_document(module, ids[d], mask[d], positions, shift_labels=labels[d],
                                       checkpoint=checkpoint)
        ntp = loss_sum / counts[micro.start]
        rows = slice(d * n_rows_per_doc, (d + 1) * n_rows_per_doc)
        branches = row_snapshots(snaps, positions, ttt_n)
        if inline is not None:
            with timed(inline.timing, "gen"):
                ppo["responses"][rows] = inline.decode(branches, first[rows])
        lp, hidden = branch_forward(module, branches, first[rows], ppo["responses"][rows], temperature=temperature)
        if inline is not None:
            ppo["old_log_probs"][rows] = lp.detach()
            ppo["advantages"][rows] = inline.score(rows, hidden.detach(), ppo["responses"][rows])
        objective = ntp * plan.sft_scale + _ppo_objective(ppo["old_log_probs"], lp, ppo["advantages"], rows, pair,
                                                          plan)
        objective.backward()
        new_lp[rows] = lp.detach()
        ntp_raw[micro.start] = ntp_raw[micro.start].to(ntp.device) + ntp.detach()
    pg_raw, pg_metrics = [], {}
    for sl in pair.ppo_micro:
        loss, metrics = ppo_clip_loss(ppo["old_log_probs"][sl], new_lp[sl], ppo["advantages"][sl],
                                      torch.ones_like(new_lp[sl]))
        pg_raw.append(loss)
        for key, value in metrics.items():
            pg_metrics.setdefault(key, []).append(value)
    return [ntp_raw[sl.start] for sl in pair.sft_micro], pg_raw, pg_metrics
