"""Per-token quantities read off the logits, via verl's own pure functions (spec 2.A Steps 1 and 4, 2.C).

- `position_entropy`: entropy of softmax(logits) at temperature 1 for every position (position i describes the
  prediction of token i + 1): verl's `entropy_from_logits` (logsumexp minus the expected logit).
- `response_log_probs`: log-probabilities of the last k tokens of a (prefix, response) row at a temperature, from
  the k logits that predict them: verl's `logprobs_from_logits` on logits[:, -k-1:-1] / T, as upstream dp_actor.
"""

from __future__ import annotations

import torch


ENTROPY_ROWS_PER_CHUNK = 256


def position_entropy(logits: torch.Tensor) -> torch.Tensor:
    """[B, S] entropy from [B, S, V] logits (dtype kept, as under the official bf16 autocast).

    verl's `entropy_from_logits` on 256 positions at a time: each row's result is bit-identical to one call on the
    whole tensor (the reductions run along the vocabulary only), while the softmax temporaries stay cache-sized
    (about 4x faster on CPU at V = 4096, and a [B, S, V] temporary less on a GPU).
    """
    from verl.utils.torch_functional import entropy_from_logits

    flat = logits.reshape(-1, logits.shape[-1])
    parts = [entropy_from_logits(flat[i:i + ENTROPY_ROWS_PER_CHUNK])
             for i in range(0, flat.shape[0], ENTROPY_ROWS_PER_CHUNK)]
    return torch.cat(parts).view(logits.shape[:-1])


def response_log_probs(logits: torch.Tensor, response_ids: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """[N, k] log p(response token) from logits [N, S + k, V] of the full row and response_ids [N, k]."""
    if temperature <= 0:
        raise ValueError(f"temperature (ttt_temperature) must be > 0; got {temperature!r}")
    k = response_ids.shape[-1]
    if logits.dim() != 3 or logits.shape[0] != response_ids.shape[0] or logits.shape[1] < k + 1:
        raise ValueError(
            f"logits must be [N, S + k, V] with S >= 1 for response_ids [N, k={k}]; got {tuple(logits.shape)}"
        )
    from verl.utils.torch_functional import logprobs_from_logits

    return logprobs_from_logits(logits[:, -k - 1:-1, :] / temperature, response_ids)
