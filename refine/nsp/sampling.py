"""Sampling one rollout token from next-token logits: spec 2.A Step 3 (rollouts) in the fast NSP mode.

The faithful mode samples with HF `generate(do_sample=True, min_new_tokens=max_new_tokens=k, temperature, top_p,
top_k)`. This module applies the same logits processors in the same order (transformers' own classes): EOS
suppressed (what `min_new_tokens=k` does for all k steps), then temperature, top-k (0 = off), top-p (1 = off),
then one draw from the softmax. So a rollout decoded step by step from a recurrent state follows the same
distribution as `generate` on the re-left-padded prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sampling_processors(*, temperature: float, top_k: int, top_p: float, suppress_ids: Sequence[int] = ()):
    """transformers' processors for one sampling step, in `generate`'s order."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    if not temperature > 0:
        raise ValueError(f"temperature (ttt_temperature) must be > 0; got {temperature!r}")
    processors = LogitsProcessorList()
    if suppress_ids:
        processors.append(SuppressTokensLogitsProcessor(list(suppress_ids)))
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k is not None and top_k > 0:
        processors.append(TopKLogitsWarper(top_k=top_k))
    if top_p is not None and top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=top_p))
    return processors


def eos_ids(eos_token_id) -> list[int]:
    """The EOS id(s) as a list (None -> [])."""
    if eos_token_id is None:
        return []
    if isinstance(eos_token_id, int):
        return [eos_token_id]
    return [int(i) for i in eos_token_id]


def sample_next(logits: torch.Tensor, processors, generator: torch.Generator | None) -> torch.Tensor:
    """[N] token ids drawn from [N, V] next-token logits after `processors` (float32 softmax, as `generate`)."""
    scores = processors(None, logits.float())
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
