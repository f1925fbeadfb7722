"""Packed (`cu_seqlens`) <-> right-padded batch conversion for the CPU kernels.

fla packs variable-length sequences as `[1, total_tokens, ...]` with `cu_seqlens` boundaries. The CPU kernels
instead right-pad every sequence into `[N, T_max, ...]` and run one batched computation: the padding sits after
each sequence's last token with zero inputs, so it can neither reach that sequence's outputs nor (because zero
keys/betas/log-decays leave the state unchanged) its final state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VarlenLayout:
    """Where each packed token lives in the padded `[N, max_len]` grid."""

    num_seqs: int
    max_len: int
    lengths: torch.Tensor  # [N] long
    flat_index: torch.Tensor  # [total_tokens] long, index into the flattened [N * max_len] grid

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor, total_tokens: int) -> VarlenLayout:
        """Build the layout; validates that `cu_seqlens` is a non-decreasing 0..total_tokens boundary list."""
        cu = cu_seqlens.to(torch.long)
        if cu.ndim != 1 or cu.numel() < 2:
            raise ValueError(f"cu_seqlens must be 1-D with at least 2 entries, got shape {tuple(cu.shape)}")
        lengths = cu.diff()
        if int(cu[0]) != 0 or int(cu[-1]) != total_tokens or bool((lengths < 0).any()):
            raise ValueError(
                f"cu_seqlens must rise from 0 to the number of tokens ({total_tokens}), got {cu.tolist()}"
            )
        num_seqs = lengths.numel()
        max_len = max(int(lengths.max()), 1)
        seq_id = torch.repeat_interleave(torch.arange(num_seqs, device=cu.device), lengths)
        pos = torch.arange(total_tokens, device=cu.device) - cu[seq_id]
        return cls(num_seqs, max_len, lengths, seq_id * max_len + pos)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """`[1, total, ...]` -> `[N, max_len, ...]` with zeros after each sequence (differentiable)."""
        flat = packed[0]
        grid = flat.new_zeros((self.num_seqs * self.max_len, *flat.shape[1:]))
        grid = grid.index_copy(0, self.flat_index, flat)
        return grid.view(self.num_seqs, self.max_len, *flat.shape[1:])

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """`[N, max_len, ...]` -> `[1, total, ...]` (differentiable)."""
        flat = padded.reshape(self.num_seqs * self.max_len, *padded.shape[2:])
        return flat.index_select(0, self.flat_index).unsqueeze(0)
