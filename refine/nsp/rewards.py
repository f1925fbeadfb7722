"""NSP sequence rewards and their metrics (spec 2.A Step 5, 1.4, Q4).

Per rollout token: cosine similarity of response vs ground-truth final-norm hidden state (over H, torch default
eps), exact id match (binary), or their sum (hybrid, in [-1, 2]). The rollout's scalar reward is the mean over its
k tokens and sits at the last response position of an otherwise-zero [N, k] token-level reward.

The cosine reward's chance level (`chance_partners`, `chance_cosine`, `chance_metrics`) is logged beside it and never
enters the reward: the cosine compares two of the policy's own hidden states, so anything that pulls all hidden states
together (a large update, collapse) raises it without the rollout predicting anything. Scoring each rollout against
the ground truth of a *different* prefix measures that part; the reward above it is what the rollout earned.
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


def chance_partners(n_docs: int, n_chunks: int, ttt_n: int = 1) -> torch.Tensor:
    """[N] for each rollout row (`build_rollout_batch` order: document, prefix, copy), the row whose ground truth is
    its chance-level partner: the same copy of the next prefix of the same document (prefix j -> (j + 1) mod C), so
    a rollout is never paired with its own prefix's ground truth and the partner shares the document's topic (the
    conservative, higher baseline). With C = 1, the same prefix of the next document ((b + 1) mod B); with C = 1 and
    one document there is no partner: -1.

    A fixed derangement (no randomness), so the faithful and fast modes and a resumed run pair the same rows. Where
    the position clamp collapsed two prefixes onto one position, their partners share the ground truth: the chance
    level is then that much higher.
    """
    if min(n_docs, n_chunks, ttt_n) < 1:
        raise ValueError(f"n_docs, n_chunks and ttt_n must be >= 1; got {n_docs}, {n_chunks}, {ttt_n}")
    doc = torch.arange(n_docs).view(-1, 1, 1)
    prefix = torch.arange(n_chunks).view(1, -1, 1)
    copy = torch.arange(ttt_n).view(1, 1, -1)
    if n_chunks > 1:
        doc, prefix = doc.expand(-1, n_chunks, ttt_n), (prefix + 1) % n_chunks
    elif n_docs > 1:
        doc = (doc + 1) % n_docs
    else:
        return torch.full((ttt_n,), -1, dtype=torch.long)
    return ((doc * n_chunks + prefix) * ttt_n + copy).expand(n_docs, n_chunks, ttt_n).reshape(-1)


def chance_cosine(response_hidden: torch.Tensor, target_hidden: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
    """[N] chance level of each rollout's cosine reward: the mean over its k tokens of the cosine between its hidden
    states and its partner row's ground-truth hidden states (token t against token t), as `token_rewards` computes
    the reward itself. `target_hidden` holds every row's ground truth [M, k, H]; `partners` [N] indexes it (-1: no
    partner, NaN)."""
    if response_hidden.dim() != 3 or target_hidden.dim() != 3 or response_hidden.shape[1:] != target_hidden.shape[1:]:
        raise ValueError(f"response_hidden [N, k, H] and target_hidden [M, k, H] must agree in k and H; got "
                         f"{tuple(response_hidden.shape)} and {tuple(target_hidden.shape)}")
    if partners.shape != response_hidden.shape[:1]:
        raise ValueError(f"partners must be [N] = [{response_hidden.shape[0]}]; got {tuple(partners.shape)}")
    valid = partners >= 0
    partner_hidden = target_hidden[partners.clamp_min(0).to(target_hidden.device)]
    chance = F.cosine_similarity(response_hidden, partner_hidden, dim=-1).float().mean(dim=-1)
    return chance.masked_fill(~valid.to(chance.device), float("nan"))


def chance_metrics(cosine: torch.Tensor, chance: torch.Tensor) -> dict[str, float]:
    """`reward/cs_reward_chance_mean` (the cosine reward's chance level) and `reward/cs_reward_above_chance_mean`
    (reward minus chance level, mean over rows): a rising reward with a flat difference is hidden states moving
    together, not rollouts getting closer to their own continuation."""
    cosine, chance = cosine.float(), chance.float()
    return {
        "reward/cs_reward_chance_mean": chance.mean().item(),
        "reward/cs_reward_above_chance_mean": (cosine - chance).mean().item(),
    }
