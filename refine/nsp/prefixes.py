"""NSP rollout prompts and their targets (spec 2.A Step 2, Q3, Q7, Q20).

Each chosen r gives one prefix: original tokens [0, r) (left padding included) written right-aligned into a row
of the pad id of length S, i.e. re-left-padded to the full length (the layout LaCT's outputs depend on, Q7).
The ground truth is the original tokens [r, r + k) and the final-norm hidden states at the same positions.
Rows are sequence-major: all chunks (and their ttt_n repeats, interleaved) of sequence 0 first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class RolloutBatch:
    """The N = B * C * ttt_n NSP rollout rows, sequence-major.

    Attributes:
        input_ids: [N, S] prefix tokens, re-left-padded with the pad id.
        attention_mask: [N, S] the original mask over [0, r), right-aligned, zeros elsewhere.
        ground_truth_ids: [N, k] original tokens [r, r + k).
        positions: [N] r, the first target position in the original row.
        source_index: [N] the row b of the original batch each rollout row comes from.
        chunk_index: [N] the chunk j in 0..C-1 each rollout row comes from.
        uid: [N] GRPO group ids (numpy object array of str): one per document when ttt_n = 1, one per prefix
            (shared by its ttt_n repeats) when ttt_n > 1 (Q3).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    ground_truth_ids: torch.Tensor
    positions: torch.Tensor
    source_index: torch.Tensor
    chunk_index: torch.Tensor
    uid: np.ndarray

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def target_index(positions: torch.Tensor, response_length: int) -> torch.Tensor:
    """[..., k] indices r + 0..k-1 of the ground-truth tokens / hidden states in the original row."""
    return positions.unsqueeze(-1) + torch.arange(response_length, device=positions.device)


def gather_target_ids(input_ids: torch.Tensor, positions: torch.Tensor, response_length: int) -> torch.Tensor:
    """Ground-truth ids [B, C, k] = input_ids[b, r + i] from ids [B, S] and positions [B, C]."""
    index = target_index(positions, response_length)  # [B, C, k]
    return torch.gather(input_ids, 1, index.flatten(1)).view_as(index)


def gather_target_hidden(hidden_states: torch.Tensor, positions: torch.Tensor, response_length: int) -> torch.Tensor:
    """Target hidden states [B, C, k, H] = hidden_states[b, r + i] from [B, S, H] and positions [B, C].

    Runs on the worker, so the driver only ever holds B * C * k * H values, never B * S * H (Q20).
    """
    batch, n_chunks = positions.shape
    hidden = hidden_states.shape[-1]
    index = target_index(positions, response_length).flatten(1)  # [B, C*k]
    picked = torch.gather(hidden_states, 1, index.unsqueeze(-1).expand(-1, -1, hidden))
    return picked.view(batch, n_chunks, response_length, hidden)


def expand_targets(targets: torch.Tensor, ttt_n: int = 1) -> torch.Tensor:
    """[B, C, ...] per-chunk targets to [B * C * ttt_n, ...] rows in `build_rollout_batch` order."""
    flat = targets.flatten(0, 1)
    return flat.repeat_interleave(ttt_n, dim=0) if ttt_n > 1 else flat


def build_rollout_batch(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    *,
    response_length: int,
    pad_token_id: int,
    ttt_n: int = 1,
    source_uids: Sequence | None = None,
) -> RolloutBatch:
    """Build the NSP rollout prompts, ground-truth ids and GRPO uids (spec 2.A Step 2).

    Args:
        input_ids, attention_mask: [B, S] the left-padded documents.
        positions: [B, C] rollout starts r from `select_positions`.
        response_length: k.
        pad_token_id: fill value of the re-left-padded prompt (pad = EOS on the real tokenizers).
        ttt_n: rollouts per prefix; > 1 repeats each row ttt_n times (interleaved) and groups per prefix.
        source_uids: optional B per-document ids (the trainer's row uids); default "0".."B-1". With ttt_n > 1 the
            per-prefix uid is "<source uid>/<chunk>" (the official code draws a fresh uuid; only distinctness
            within the batch matters to GRPO).
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            "input_ids and attention_mask must both be [B, S]; got "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    batch, seq_len = input_ids.shape
    if positions.dim() != 2 or positions.shape[0] != batch:
        raise ValueError(f"positions must be [B={batch}, C]; got {tuple(positions.shape)}")
    if not isinstance(ttt_n, int) or ttt_n < 1:
        raise ValueError(f"ttt_n must be an int >= 1; got {ttt_n!r}")
    if response_length < 1:
        raise ValueError(f"response_length must be >= 1; got {response_length!r}")
    if (positions < 1).any() or (positions + response_length > seq_len).any():
        raise ValueError(
            f"positions must lie in [1, S - k] = [1, {seq_len - response_length}]; got {positions.tolist()}"
        )
    if source_uids is not None and len(source_uids) != batch:
        raise ValueError(f"source_uids must have B={batch} entries; got {len(source_uids)}")
    n_chunks = positions.shape[1]
    device = input_ids.device

    ground_truth = expand_targets(gather_target_ids(input_ids, positions, response_length), ttt_n)
    source_index = torch.arange(batch, device=device).repeat_interleave(n_chunks * ttt_n)
    chunk_index = torch.arange(n_chunks, device=device).repeat_interleave(ttt_n).repeat(batch)
    r = expand_targets(positions, ttt_n)

    # Right-align [0, r): output column i holds source column i - (S - r) when that is >= 0.
    src_col = torch.arange(seq_len, device=device).unsqueeze(0) - (seq_len - r).unsqueeze(1)  # [N, S]
    valid = src_col >= 0
    src_col = src_col.clamp(min=0)
    prefix_ids = torch.where(valid, input_ids[source_index].gather(1, src_col), torch.full_like(src_col, pad_token_id))
    prefix_mask = torch.where(
        valid, attention_mask[source_index].gather(1, src_col), torch.zeros_like(src_col)
    ).to(attention_mask.dtype)
    prefix_ids = prefix_ids.to(input_ids.dtype)

    return RolloutBatch(
        input_ids=prefix_ids,
        attention_mask=prefix_mask,
        ground_truth_ids=ground_truth,
        positions=r,
        source_index=source_index,
        chunk_index=chunk_index,
        uid=rollout_uids(batch, n_chunks, ttt_n, source_uids),
    )


def rollout_uids(batch: int, n_chunks: int, ttt_n: int, source_uids: Sequence | None = None) -> np.ndarray:
    """GRPO group id of each rollout row (sequence-major): the document's uid when ttt_n = 1, "<uid>/<chunk>" (one
    group per prefix) when ttt_n > 1 (Q3). Groups never cross documents."""
    doc_uids = [str(u) for u in source_uids] if source_uids is not None else [str(b) for b in range(batch)]
    if ttt_n == 1:
        uids = [doc_uids[b] for b in range(batch) for _ in range(n_chunks)]
    else:
        uids = [f"{doc_uids[b]}/{j}" for b in range(batch) for j in range(n_chunks) for _ in range(ttt_n)]
    return np.array(uids, dtype=object)
