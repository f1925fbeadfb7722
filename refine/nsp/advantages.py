"""GRPO outcome advantages over the NSP groups (spec 2.A Step 6, Q3).

Delegates to verl's own `compute_grpo_outcome_advantage` (eps 1e-6, unbiased std, singleton group -> mean 0 and
std 1). The grouping is the uid from `build_rollout_batch`: the C prefixes of one document when ttt_n = 1, the
ttt_n rollouts of one prefix when ttt_n > 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

GRPO_EPSILON = 1e-6


def grpo_advantages(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    uids: Sequence | np.ndarray,
    *,
    norm_adv_by_std_in_grpo: bool = True,
    epsilon: float = GRPO_EPSILON,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both [N, k]: per-group normalised outcome score broadcast over the response mask."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    index = np.asarray(uids, dtype=object)
    if index.shape != (token_level_rewards.shape[0],):
        raise ValueError(f"uids must have N={token_level_rewards.shape[0]} entries; got shape {index.shape}")
    return compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards,
        response_mask=response_mask,
        index=index,
        epsilon=epsilon,
        norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
    )
