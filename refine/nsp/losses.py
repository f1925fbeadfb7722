"""Losses of the TTT update: next-token prediction (with the pad-mask switch, Q6) and dual-clip PPO (spec 2.C).

NTP follows the models' own shift semantics: logits at position i predict token i + 1 and the last position has no
label. `mask_pad_in_ntp=True` is LaCT-official: position i is dropped where attention_mask[i] == 0, applied after
the shift, so the last left-pad position (which predicts the first real token) is dropped too.
`mask_pad_in_ntp=False` is DeltaNet-official (stock fla): every position counts, pads included (spec 5.1/5.2).

The PPO-clip loss is verl 0.9.1's registered "vanilla" policy loss, called with a minimal verl `ActorConfig`.
It matches the official (verl 0.5.0 `compute_policy_loss`) formula: ratio = exp(clamp(logp - old, -20, 20)),
clip 0.2 both sides, dual-clip c = 3.0 for negative advantages, token-mean. The only difference is verl 0.9.1's
token-mean divides by the mask sum without 0.5.0's +1e-8 (NSP masks are all ones, so < 1 ulp).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
PPO_CLIP_RATIO = 0.2
PPO_CLIP_RATIO_C = 3.0
PPO_LOSS_AGG_MODE = "token-mean"


def ntp_loss_mask(attention_mask: torch.Tensor, *, mask_pad_in_ntp: bool) -> torch.Tensor:
    """[B, S-1] bool: which shifted positions i (logit i -> token i + 1) count in the NTP loss."""
    if mask_pad_in_ntp:
        return attention_mask[:, :-1].bool()
    return torch.ones_like(attention_mask[:, :-1], dtype=torch.bool)


def ntp_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, mask_pad_in_ntp: bool) -> torch.Tensor:
    """`labels` for an HF causal LM that shifts inside (fla, HF): gives the same loss as `ntp_loss`.

    The model reads label i + 1 at logit i, so dropping logit position i means labels[:, i + 1] = -100.
    """
    labels = input_ids.clone()
    keep = ntp_loss_mask(attention_mask, mask_pad_in_ntp=mask_pad_in_ntp)
    labels[:, 1:] = labels[:, 1:].masked_fill(~keep, IGNORE_INDEX)
    return labels


def ntp_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, mask_pad_in_ntp: bool
) -> torch.Tensor:
    """Mean next-token cross-entropy (float32) over the counted positions of a [B, S, V] logit tensor."""
    if logits.dim() != 3 or logits.shape[:2] != input_ids.shape or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"logits must be [B, S, V] over input_ids/attention_mask [B, S]; got {tuple(logits.shape)}, "
            f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}"
        )
    labels = ntp_labels(input_ids, attention_mask, mask_pad_in_ntp=mask_pad_in_ntp)[:, 1:]
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


@lru_cache(maxsize=8)
def policy_loss_config(clip_ratio: float = PPO_CLIP_RATIO, clip_ratio_c: float = PPO_CLIP_RATIO_C,
                       loss_agg_mode: str = PPO_LOSS_AGG_MODE):
    """A minimal verl `ActorConfig` carrying only what the vanilla policy loss reads (single-rank token-mean)."""
    from verl.workers.config.actor import ActorConfig

    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio=clip_ratio,
        clip_ratio_low=clip_ratio,
        clip_ratio_high=clip_ratio,
        clip_ratio_c=clip_ratio_c,
        loss_agg_mode=loss_agg_mode,
    )


def ppo_clip_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio: float = PPO_CLIP_RATIO,
    clip_ratio_c: float = PPO_CLIP_RATIO_C,
    loss_agg_mode: str = PPO_LOSS_AGG_MODE,
    metric_suffix: str = "_ttt",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dual-clip PPO loss of one micro-batch ([N, k] inputs) via verl's "vanilla" policy loss.

    Returns the raw (unscaled) loss and the official metrics `actor/pg_clipfrac{suffix}`,
    `actor/ppo_kl{suffix}`, `actor/pg_clipfrac_lower{suffix}`.
    """
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    loss_fn = get_policy_loss_fn("vanilla")
    loss, metrics = loss_fn(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=response_mask,
        loss_agg_mode=loss_agg_mode,
        config=policy_loss_config(clip_ratio, clip_ratio_c, loss_agg_mode),
    )
    return loss, {f"{key}{metric_suffix}": value for key, value in metrics.items()}
