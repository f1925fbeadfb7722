"""Choose the NSP rollout start positions (spec 2.A Step 2, Q16, Q17, Q19, Q27).

For each left-padded row: score every position (smoothed entropy, uniform, or raw entropy), cut the real tokens
into `n_chunks` equal chunks of c = L // C tokens (the L mod C tail belongs to no chunk), pick one position t per
chunk (sample from softmax of the chunk's scores, or argmax / argmin), and return r = chunk_start + t + 1 clamped to
[start + 20, S - 20]. r is the index in the padded row of the first token the rollout must predict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Hard-coded in the official code (Q16): a prefix keeps at least this many real tokens and the last this many
# positions of the padded row are never a rollout start.
CLAMP_MARGIN = 20
SAMPLING_MODES = ("entropy", "uniform", "argmax", "argmin")


def validate_nsp_sizes(*, max_prompt_length: int, response_length: int, n_chunks: int) -> None:
    """Raise ValueError for NSP sizes the official clamp cannot serve (Q16): k > 20, C < 1, S < 20 + k.

    Call it up front (config validation) so bad sizes fail before any model work.
    """
    if not isinstance(response_length, int) or response_length < 1 or response_length > CLAMP_MARGIN:
        raise ValueError(
            f"response_length (ttt_response_length, k) must be an int in [1, {CLAMP_MARGIN}] because the clamp keeps "
            f"only the last {CLAMP_MARGIN} positions for the ground truth; got {response_length!r}"
        )
    if not isinstance(n_chunks, int) or n_chunks < 1:
        raise ValueError(f"n_chunks (ttt_n_chunks, C) must be an int >= 1; got {n_chunks!r}")
    if max_prompt_length < CLAMP_MARGIN + response_length:
        raise ValueError(
            f"max_prompt_length must be >= {CLAMP_MARGIN} + response_length = {CLAMP_MARGIN + response_length}; "
            f"got {max_prompt_length}"
        )


def smoothing_width(response_length: int) -> int:
    """Odd moving-average width: k when k is odd, else k + 1."""
    return response_length if response_length % 2 == 1 else response_length + 1


def smooth_entropy(entropy: torch.Tensor, response_length: int) -> torch.Tensor:
    """Centred moving average over the whole padded row, zero padded by w // 2 on each side (zeros count).

    k = 1 returns the entropies unchanged. Computed in float32.
    """
    scores = entropy.float()
    if response_length == 1:
        return scores
    width = smoothing_width(response_length)
    pooled = F.avg_pool1d(scores.unsqueeze(1), kernel_size=width, stride=1, padding=width // 2, count_include_pad=True)
    return pooled.squeeze(1)


def position_scores(entropy: torch.Tensor, response_length: int, mode: str) -> torch.Tensor:
    """Per-position selection scores [B, S] for `mode` (entropy: smoothed; uniform: ones; argmax/argmin: raw)."""
    if mode == "entropy":
        return smooth_entropy(entropy, response_length)
    if mode == "uniform":
        return torch.ones_like(entropy, dtype=torch.float32)
    if mode in ("argmax", "argmin"):
        return entropy.float()
    raise ValueError(f"mode (ttt_sampling) must be one of {SAMPLING_MODES}; got {mode!r}")


def _row_extents(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, L) per row of a left-padded 0/1 mask; ValueError if a row is not left-padded."""
    mask = attention_mask.long()
    lengths = mask.sum(dim=1)
    seq_len = mask.shape[1]
    starts = seq_len - lengths
    expected = torch.arange(seq_len, device=mask.device).unsqueeze(0) >= starts.unsqueeze(1)
    bad = (mask.bool() != expected).any(dim=1)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"attention_mask row {row} is not left-padded (zeros then ones)")
    return starts, lengths


def _sample_categorical(probs: torch.Tensor, generator: torch.Generator | None, chunk_sizes: torch.Tensor):
    """One index per [B, C] row of probs [B, C, c_max] by inverse CDF on one uniform per (row, chunk).

    The uniforms are drawn row-major on the generator's device (CPU without one), so splitting the rows into
    micro-batches that share one generator draws the same positions as a single call.
    """
    batch, n_chunks, _ = probs.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    uniform = torch.rand(batch, n_chunks, generator=generator, device=gen_device).to(probs.device)
    cdf = probs.cumsum(dim=2)
    target = uniform.unsqueeze(2) * cdf[..., -1:]
    offset = (cdf < target).sum(dim=2)
    # u * total may round up to total: keep the index inside the chunk.
    return torch.minimum(offset, (chunk_sizes - 1).unsqueeze(1))


def select_positions(
    entropy: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    n_chunks: int,
    response_length: int,
    mode: str = "entropy",
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """Rollout start index r [B, n_chunks] in the padded row, one per chunk (spec 2.A Step 2).

    Args:
        entropy: [B, S] entropy at each position (position i predicts token i + 1), any float dtype.
        attention_mask: [B, S] 0/1, left-padded.
        n_chunks: C, chunks (prefixes) per row.
        response_length: k, rollout length; also sets the smoothing width.
        mode: "entropy" (softmax sampling on smoothed entropy), "uniform", "argmax" or "argmin".
        generator: seeds the categorical draws (the official code uses the unseeded global RNG, Q27); one uniform
            per (row, chunk) is drawn on its device, row-major, so micro-batching with a shared CPU generator
            gives the same positions as one call. None: torch's global CPU RNG.

    Raises:
        ValueError: on bad sizes or mode, a row with fewer than 20 + k real tokens, or a chunk of size 0
            (fewer real tokens than chunks).

    For 20 + k <= L < 40 the clamp bounds cross; the lower bound wins, so a prefix keeps >= 20 real tokens and the
    ground truth [r, r + k) still fits inside the row.
    """
    if entropy.dim() != 2 or attention_mask.shape != entropy.shape:
        raise ValueError(
            "entropy and attention_mask must both be [B, S]; got "
            f"{tuple(entropy.shape)} and {tuple(attention_mask.shape)}"
        )
    if mode not in SAMPLING_MODES:
        raise ValueError(f"mode (ttt_sampling) must be one of {SAMPLING_MODES}; got {mode!r}")
    batch, seq_len = entropy.shape
    validate_nsp_sizes(max_prompt_length=seq_len, response_length=response_length, n_chunks=n_chunks)
    starts, lengths = _row_extents(attention_mask)
    too_short = lengths < CLAMP_MARGIN + response_length
    if too_short.any():
        row = int(too_short.nonzero()[0, 0])
        raise ValueError(
            f"attention_mask row {row} has {int(lengths[row])} real tokens; NSP needs at least "
            f"{CLAMP_MARGIN} + response_length = {CLAMP_MARGIN + response_length}"
        )
    chunk_sizes = lengths // n_chunks
    if (chunk_sizes < 1).any():
        row = int((chunk_sizes < 1).nonzero()[0, 0])
        raise ValueError(f"n_chunks={n_chunks} exceeds the {int(lengths[row])} real tokens of row {row}")

    scores = position_scores(entropy, response_length, mode)
    device = entropy.device
    # One [B, C, c_max] window per chunk; rows with a smaller c get their extra slots masked out.
    c_max = int(chunk_sizes.max())
    offsets = torch.arange(c_max, device=device)
    chunk_starts = starts.unsqueeze(1) + torch.arange(n_chunks, device=device) * chunk_sizes.unsqueeze(1)  # [B, C]
    index = (chunk_starts.unsqueeze(2) + offsets).clamp(max=seq_len - 1)  # [B, C, c_max]
    in_chunk = offsets < chunk_sizes.view(batch, 1, 1)
    chunk_scores = torch.gather(scores, 1, index.flatten(1)).view(batch, n_chunks, c_max)
    if mode == "argmin":
        offset = chunk_scores.masked_fill(~in_chunk, float("inf")).argmin(dim=2)
    else:
        chunk_scores = chunk_scores.masked_fill(~in_chunk, float("-inf"))
        if mode == "argmax":
            offset = chunk_scores.argmax(dim=2)
        else:
            offset = _sample_categorical(torch.softmax(chunk_scores, dim=2), generator, chunk_sizes)
    r = chunk_starts + offset + 1
    # Lower bound applied last: it wins when the bounds cross (short rows), see docstring.
    return r.clamp(max=seq_len - CLAMP_MARGIN).clamp(min=starts.unsqueeze(1) + CLAMP_MARGIN)
