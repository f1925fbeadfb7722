"""NSP sequence rewards and their metrics (spec 2.A Step 5, 1.4, Q4).

Per rollout token: cosine similarity of response vs ground-truth final-norm hidden state (over H, torch default
eps), exact id match (binary), or their sum (hybrid, in [-1, 2]). The rollout's scalar reward is the mean over its
k tokens and sits at the last response position of an otherwise-zero [N, k] token-level reward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REWARD_KINDS = ("cosine_similarity", "binary", "hybrid")
# Official metric key stems (section 1.4): all three are logged every step whichever reward is used.
METRIC_STEMS = {"cosine_similarity": "cs", "binary": "binary", "hybrid": "hybrid"}


def _check_shapes(response_hidden, target_hidden, response_ids, target_ids) -> None:
    if response_hidden.dim() != 3 or response_hidden.shape != target_hidden.shape:
        raise ValueError(
            f"response_hidden and target_hidden must both be [N, k, H]; got {tuple(response_hidden.shape)} "
            f"and {tuple(target_hidden.shape)}"
        )
    if response_ids.shape != target_ids.shape or tuple(response_ids.shape) != tuple(response_hidden.shape[:2]):
        raise ValueError(
            f"response_ids and target_ids must both be [N, k] = {tuple(response_hidden.shape[:2])}; got "
            f"{tuple(response_ids.shape)} and {tuple(target_ids.shape)}"
        )


def token_rewards(response_hidden, target_hidden, response_ids, target_ids) -> dict[str, torch.Tensor]:
    """Per-token values [N, k] (float32) for all three kinds.

    The cosine runs in the hidden states' own dtype (bf16 in the official driver, spec 5.3) and is then cast.
    """
    _check_shapes(response_hidden, target_hidden, response_ids, target_ids)
    cosine = F.cosine_similarity(response_hidden, target_hidden, dim=-1).float()
    binary = (response_ids == target_ids).float()
    return {"cosine_similarity": cosine, "binary": binary, "hybrid": cosine + binary}


def all_sequence_rewards(response_hidden, target_hidden, response_ids, target_ids) -> dict[str, torch.Tensor]:
    """Per-rollout rewards [N] (mean over k) for all three kinds, keyed by reward name."""
    per_token = token_rewards(response_hidden, target_hidden, response_ids, target_ids)
    return {name: values.mean(dim=-1) for name, values in per_token.items()}


def sequence_reward(
    response_hidden: torch.Tensor,
    target_hidden: torch.Tensor,
    response_ids: torch.Tensor,
    target_ids: torch.Tensor,
    kind: str,
) -> torch.FloatTensor:
    """Per-rollout reward [N]: mean over the k tokens of the per-token value of `kind`.

    Args:
        response_hidden, target_hidden: [N, k, H] final-norm hidden states of the rollout / ground truth.
        response_ids, target_ids: [N, k] sampled / ground-truth token ids.
        kind: "cosine_similarity", "binary" or "hybrid" (cosine + binary).
    """
    if kind not in REWARD_KINDS:
        raise ValueError(f"kind (ttt_reward) must be one of {REWARD_KINDS}; got {kind!r}")
    return all_sequence_rewards(response_hidden, target_hidden, response_ids, target_ids)[kind]


def token_level_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[N, k] zeros with each rollout's scalar at its last valid response position (the last column for NSP)."""
    if scores.dim() != 1 or response_mask.dim() != 2 or response_mask.shape[0] != scores.shape[0]:
        raise ValueError(
            f"scores must be [N] and response_mask [N, k]; got {tuple(scores.shape)} and {tuple(response_mask.shape)}"
        )
    lengths = response_mask.long().sum(dim=-1)
    if (lengths < 1).any():
        raise ValueError("response_mask has a row with no valid token")
    rewards = torch.zeros(response_mask.shape, dtype=torch.float32, device=scores.device)
    rewards[torch.arange(scores.shape[0], device=scores.device), lengths - 1] = scores.float()
    return rewards


def reward_metrics(rewards_by_kind: dict[str, torch.Tensor]) -> dict[str, float]:
    """Official reward metrics: `reward/{cs,binary,hybrid}_reward_{mean,std}` (std unbiased, NaN for N = 1)."""
    metrics = {}
    for name, values in rewards_by_kind.items():
        stem = METRIC_STEMS[name]
        values = values.float()
        metrics[f"reward/{stem}_reward_mean"] = values.mean().item()
        metrics[f"reward/{stem}_reward_std"] = values.std(unbiased=True).item()
    return metrics
