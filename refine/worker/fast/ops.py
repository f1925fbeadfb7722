"""What the actor worker computes in the fast NSP mode (`refine.nsp_mode=fast`), as plain functions of a causal LM
whose family branches (`refine.models.families`) (no Ray, no verl worker; tests call them on a plain model).

Every rollout prefix doc[:r] is a prefix of its document, and the model's recurrent state after doc[:r-1]
summarises it exactly (`refine.models.state_branching`). So, per document:

- `run_document` reads the document once, segment by segment (cut at every r - 1), carrying the fla cache and
  keeping a snapshot of it at each cut; with `shift_labels` it also returns the summed NTP cross-entropy of the
  whole padded row (left pads in the first segment are masked exactly as the full-row forward masks them).
- `branch_forward` continues all C * ttt_n rows of a document from their snapshots over (doc[r-1], y_1..y_k): the
  k logits that score the response and the final-norm hidden states at the response tokens, in one batched call.
  The same call (no grad) gives the old log-probs and, with grad in the update, the new ones, so the PPO ratio is
  exactly 1 before the first optimiser step.
- `decode_branches` samples exactly k tokens per row from the snapshots (`refine.nsp.sampling`: EOS suppressed,
  temperature, top-k, top-p, as the faithful `generate`), all rows of a micro-batch of documents at once.
- `fast_rollout` runs these (no grad) for documents whose update comes after an optimiser step; the update itself
  is `refine.worker.fast.update`.

Numerics against the faithful mode: the prefix is read in segments (chunk boundaries move), the branch runs fla's
recurrent kernel where the faithful re-encoding runs the chunked one, and the NTP loss is a sum / count instead of
the model's mean. In fp32 on CPU these agree to ~1e-6 (tests/trainer/test_fast_nsp.py); nothing else differs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from refine.models.last_hidden import capture_last_hidden
from refine.models.state_branching import attends_to_cache, branch_cache, branch_mask, branch_positions, snapshot
from refine.nsp.logprobs import response_log_probs
from refine.nsp.losses import IGNORE_INDEX, ntp_labels
from refine.nsp.prefixes import expand_targets, gather_target_ids
from refine.nsp.sampling import sample_next


def cut_points(positions: Sequence[int]) -> list[int]:
    """Sorted distinct cuts r - 1: a branch starts from the state after doc[:r-1] and re-reads token r - 1, so its
    first logit (which scores y_1) comes from the branch itself."""
    return sorted({int(r) - 1 for r in positions})


def segment_bounds(positions: Sequence[int]) -> list[int]:
    """Boundaries [0, ..., last cut] of exactly C = len(positions) segments that include every cut.

    Where positions coincide (the clamp can collapse them) the longest segments are halved until there are C, so
    every document, on every FSDP rank, runs the same number of forwards (their all-gathers stay in lockstep).
    """
    cuts = cut_points(positions)
    bounds = [0, *cuts]
    if cuts[-1] < len(positions):
        raise ValueError(f"the last cut {cuts[-1]} is too short to hold C={len(positions)} segments")
    while len(bounds) - 1 < len(positions):
        i = max(range(len(bounds) - 1), key=lambda j: bounds[j + 1] - bounds[j])
        bounds.insert(i + 1, (bounds[i] + bounds[i + 1]) // 2)
    return bounds


@contextlib.contextmanager
def cache_friendly(module):
    """Switch off transformers' per-layer activation checkpointing for the duration (it forces `use_cache=False`
    in training, and the fast mode carries the cache through the graph). Yields whether it was on: the fast update
    then checkpoints whole segments instead (`run_document(checkpoint=True)`)."""
    layers = [m for m in module.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in layers:
        m.gradient_checkpointing = False
    try:
        yield bool(layers)
    finally:
        for m in layers:
            m.gradient_checkpointing = True


def shifted_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, mask_pads: bool,
                   model_masks_pads: bool = False) -> torch.Tensor:
    """[B, S] target of each position (token i + 1, or -100), as the model's own loss shifts `labels`.

    `model_masks_pads`: the model's own loss also ignores every pad position (LaCT's `mask_pad_labels`, so the
    last left pad, which predicts the first real token, too); the faithful loss is the model's, so this must
    follow it.
    """
    labels = ntp_labels(input_ids, attention_mask, mask_pad_in_ntp=mask_pads)
    shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)
    if model_masks_pads:
        shifted = shifted.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return shifted


def _checkpointed_segment(module, ids, mask, state, labels, valid):
    """(summed CE, state after) of one segment continuing from `state` (None: the document's start), on a cache
    rebuilt from `state` so that a recomputation in the backward starts from the same state."""
    out = module(input_ids=ids, attention_mask=mask, use_cache=True,
                 past_key_values=None if state is None else branch_cache(module, [state]))
    part = F.cross_entropy(out.logits[0].float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return part, snapshot(module, out.past_key_values, valid=valid)


def _segment_mask(attention_mask, start: int, stop: int, *, padded: bool, attends: bool):
    """The attention mask a segment's forward gets: none without left pads; the first segment's own; with a cached
    softmax attention every segment's mask covers all tokens read so far (the pads stay masked in the cache and the
    rotary positions continue the document's)."""
    if not padded or not (start == 0 or attends):
        return None
    return attention_mask[0 if attends else start:stop].unsqueeze(0)


def run_document(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: Sequence[int], *,
                 shift_labels: torch.Tensor | None = None, checkpoint: bool = False
                 ) -> tuple[dict[int, list[dict]], torch.Tensor | None]:
    """One [S] document read segment by segment. Returns ({cut: state snapshot}, summed NTP CE or None).

    Without `shift_labels` (no NTP) only the C segments up to the last cut run and only the last logit is kept;
    with it, one more segment reads the tail. Both passes cut the prefix identically (`segment_bounds`), so their
    states agree bit for bit. Snapshots are copied when gradients are off (a later single-token step may update a
    cache in place). `checkpoint` (with gradients and labels): each segment is an activation checkpoint that keeps
    only its input state and recomputes its activations in the backward, so the document's activations are never
    all held at once (what per-layer checkpointing would give, which the cache rules out).
    """
    seq_len = input_ids.shape[0]
    cuts = set(cut_points(positions))
    if any(not 0 < c < seq_len for c in cuts):
        raise ValueError(f"positions must lie in [2, {seq_len}]; got {list(positions)}")
    bounds = segment_bounds(positions) + ([seq_len] if shift_labels is not None else [])
    grad = torch.is_grad_enabled()
    padded = bool((attention_mask[: bounds[1]] == 0).any())  # left pads can only be in the first segment
    attends = attends_to_cache(module)
    snapshots, loss_sum, cache = {}, None, None
    if checkpoint and grad and shift_labels is not None:
        state = None
        for start, stop in zip(bounds[:-1], bounds[1:]):
            mask = _segment_mask(attention_mask, start, stop, padded=padded, attends=attends)
            part, state = activation_checkpoint(_checkpointed_segment, module, input_ids[start:stop].unsqueeze(0),
                                                mask, state, shift_labels[start:stop],
                                                attention_mask[:stop].unsqueeze(0), use_reentrant=False)
            loss_sum = part if loss_sum is None else loss_sum + part
            if stop in cuts:
                snapshots[stop] = state
        return snapshots, loss_sum
    for start, stop in zip(bounds[:-1], bounds[1:]):
        # a one-token segment without grad would take fla's in-place decoding step, whose arithmetic differs from
        # the convolution the update runs; keep the old and new log-probs bit-identical
        with torch.enable_grad() if stop - start == 1 else contextlib.nullcontext():
            out = module(
                input_ids=input_ids[start:stop].unsqueeze(0),
                attention_mask=_segment_mask(attention_mask, start, stop, padded=padded, attends=attends),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=0 if shift_labels is not None else 1,
            )
        cache = out.past_key_values
        if shift_labels is not None:
            part = F.cross_entropy(out.logits[0].float(), shift_labels[start:stop], ignore_index=IGNORE_INDEX,
                                   reduction="sum")
            loss_sum = part if loss_sum is None else loss_sum + part
        if stop in cuts:
            snapshots[stop] = snapshot(module, cache, detach_clone=not grad, valid=attention_mask[:stop].unsqueeze(0))
    return snapshots, loss_sum


def row_snapshots(snapshots: dict[int, list[dict]], positions: Sequence[int], ttt_n: int) -> list[list[dict]]:
    """The snapshot of each rollout row of one document, in rollout-row order (chunk-major, ttt_n interleaved)."""
    return [snapshots[int(r) - 1] for r in positions for _ in range(ttt_n)]


def _branch_mask(snaps, new_tokens: int) -> torch.Tensor | None:
    """[N, L + new_tokens] mask of a branch over a cache with softmax-attention keys/values (None without)."""
    cached = branch_mask(snaps)
    if cached is None:
        return None
    return torch.cat([cached, cached.new_ones(cached.shape[0], new_tokens)], dim=1)


def _positions(position_ids) -> dict:
    """The `position_ids` keyword where the family needs explicit ones (fla models take none)."""
    return {} if position_ids is None else {"position_ids": position_ids}


def branch_forward(module, snaps: list[list[dict]], first_tokens: torch.Tensor, responses: torch.Tensor, *,
                   temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs [N, k] of `responses` at `temperature`, final-norm hidden states [N, k, H] at the response
    tokens) for N rows continuing from `snaps` over (first_tokens = doc[r - 1], y_1..y_k)."""
    ids = torch.cat([first_tokens.unsqueeze(1), responses], dim=1)
    with capture_last_hidden(module) as last_hidden:
        out = module(input_ids=ids, past_key_values=branch_cache(module, snaps), use_cache=True,
                     attention_mask=_branch_mask(snaps, ids.shape[1]),
                     **_positions(branch_positions(module, snaps, 0, ids.shape[1])))
    log_probs = response_log_probs(out.logits, responses, temperature=temperature)
    return log_probs, last_hidden[0][:, 1:]


@torch.no_grad()
def decode_branches(module, snaps: list[list[dict]], first_tokens: torch.Tensor, *, response_length: int,
                    processors, generator: torch.Generator | None) -> torch.Tensor:
    """Exactly k sampled tokens [N, k] per row, decoding from the snapshots one token at a time."""
    cache, token, tokens = branch_cache(module, snaps), first_tokens, []
    for step in range(response_length):
        out = module(input_ids=token.unsqueeze(1), past_key_values=cache, use_cache=True, logits_to_keep=1,
                     attention_mask=_branch_mask(snaps, step + 1),
                     **_positions(branch_positions(module, snaps, step, 1)))
        cache = out.past_key_values
        token = sample_next(out.logits[:, -1], processors, generator)
        tokens.append(token)
    return torch.stack(tokens, dim=1)


@dataclass
class FastRollout:
    """The rollouts of one worker's documents (rows sequence-major, as `build_rollout_batch`)."""

    responses: torch.Tensor  # [N, k]
    old_log_probs: torch.Tensor  # [N, k]
    response_hidden: torch.Tensor  # [N, k, H]
    ground_truth_ids: torch.Tensor  # [N, k]


def first_tokens_of(input_ids: torch.Tensor, positions: torch.Tensor, ttt_n: int) -> torch.Tensor:
    """[N] token r - 1 of each rollout row (the token its branch re-reads)."""
    return expand_targets(torch.gather(input_ids, 1, positions - 1).unsqueeze(-1), ttt_n).squeeze(-1)


@contextlib.contextmanager
def timed(timing: dict[str, float] | None, key: str):
    """Add the wall time of the block to timing[key] (seconds; accumulates over calls)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timing is not None:
            timing[key] = timing.get(key, 0.0) + time.perf_counter() - start


@torch.no_grad()
def fast_rollout(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, *,
                 ttt_n: int, response_length: int, temperature: float, processors, micro_batch_size: int,
                 generator: torch.Generator | None, responses: torch.Tensor | None = None,
                 timing: dict[str, float] | None = None) -> FastRollout:
    """Rollouts, old log-probs and response hidden states off the states at each r, per micro-batch of documents.

    `responses` [N, k], when given, replaces sampling (tests inject the faithful rollouts). `timing` collects
    `state_pass` (reading the prefixes), `gen` (decoding) and `old_log_prob` (teacher-forced branches) seconds.
    """
    n_docs, n_chunks = positions.shape
    rows = n_chunks * ttt_n
    first = first_tokens_of(input_ids, positions, ttt_n)
    sampled, old_lp, hidden = [], [], []
    for lo in range(0, n_docs, max(1, micro_batch_size)):
        docs = range(lo, min(lo + micro_batch_size, n_docs))
        per_doc = []
        with timed(timing, "state_pass"):
            for d in docs:
                snaps, _ = run_document(module, input_ids[d], attention_mask[d], positions[d].tolist())
                per_doc.append(row_snapshots(snaps, positions[d].tolist(), ttt_n))
        span = slice(docs.start * rows, docs.stop * rows)
        with timed(timing, "gen"):
            if responses is None:
                chunk = decode_branches(module, [s for snaps in per_doc for s in snaps], first[span],
                                        response_length=response_length, processors=processors,
                                        generator=generator)
            else:
                chunk = responses[span].to(input_ids.device)
        sampled.append(chunk)
        with timed(timing, "old_log_prob"):
            for i, d in enumerate(docs):
                rows_d = slice(i * rows, (i + 1) * rows)
                lp, h = branch_forward(module, per_doc[i], first[d * rows:(d + 1) * rows], chunk[rows_d],
                                       temperature=temperature)
                old_lp.append(lp)
                hidden.append(h)
    ground_truth = expand_targets(gather_target_ids(input_ids, positions, response_length), ttt_n)
    return FastRollout(torch.cat(sampled), torch.cat(old_lp), torch.cat(hidden), ground_truth)
