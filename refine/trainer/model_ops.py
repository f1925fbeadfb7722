"""What the actor worker computes on its model, as plain functions of an HF causal LM (no Ray, no verl worker).

The worker RPCs in `refine.trainer.worker` call these on `self.actor.engine.module` (the FSDP module verl built);
tests call them on a plain HF model. Each function is one worker-side step of the inner loop (spec 2.A, 2.C, 1.1).
Micro-batching follows the official per-GPU micro-batch sizes; all ranks run the same number of forward and
`generate` calls (fixed k, no EOS stop), so FSDP all-gathers stay in lockstep.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from refine.models.last_hidden import capture_last_hidden
from refine.nsp.logprobs import position_entropy, response_log_probs
from refine.nsp.losses import ntp_labels, ppo_clip_loss
from refine.nsp.positions import select_positions
from refine.nsp.prefixes import gather_target_hidden
from refine.nsp.update_plan import CombinedUpdatePlan, MiniBatchPair, NtpOnlyPlan


def micro_slices(n: int, micro: int) -> Iterator[slice]:
    """Consecutive slices of at most `micro` rows covering range(n)."""
    micro = max(1, min(micro, n))
    for start in range(0, n, micro):
        yield slice(start, min(start + micro, n))


def _forward(module, input_ids, attention_mask, **kwargs):
    return module(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)


@functools.cache
def _keeps_logits(cls) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _last_logits_kwargs(module, n: int) -> dict:
    """`logits_to_keep=n` when the model supports it: the response forwards need only the last k + 1 logits
    (a [rows, S + k, V] logit tensor is gigabytes at S = 16K)."""
    return {"logits_to_keep": n} if _keeps_logits(type(module)) else {}


@dataclass
class Analysis:
    """Output of the analysis forward on one worker's rows (spec 2.A steps 1-2, Q20)."""

    positions: torch.Tensor  # [B, C] rollout starts r
    target_hidden: torch.Tensor  # [B, C, k, H] final-norm hidden states at [r, r + k)
    entropies: torch.Tensor | None = None  # [B, S], only when asked for (tests)


@torch.no_grad()
def analyse(
    module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    n_chunks: int,
    response_length: int,
    sampling: str,
    micro_batch_size: int,
    generator: torch.Generator | None,
    return_entropies: bool = False,
) -> Analysis:
    """Full-row forward per micro-batch: entropies -> positions (`select_positions`) -> target hidden states.

    Selection runs per micro-batch with the same generator, which draws exactly what one call on all rows would
    draw (rows are visited in order). Only [B, C, k, H] leaves this function, never [B, S, H].
    """
    positions, targets, entropies = [], [], []
    for sl in micro_slices(input_ids.shape[0], micro_batch_size):
        with capture_last_hidden(module) as last_hidden:
            out = _forward(module, input_ids[sl], attention_mask[sl])
        entropy = position_entropy(out.logits)  # model dtype, as officially
        r = select_positions(
            entropy,
            attention_mask[sl],
            n_chunks=n_chunks,
            response_length=response_length,
            mode=sampling,
            generator=generator,
        )
        positions.append(r)
        targets.append(gather_target_hidden(last_hidden[0], r, response_length))
        if return_entropies:
            entropies.append(entropy)
    return Analysis(
        positions=torch.cat(positions),
        target_hidden=torch.cat(targets),
        entropies=torch.cat(entropies) if return_entropies else None,
    )


@torch.no_grad()
def generate_responses(
    module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    response_length: int,
    temperature: float,
    top_p: float,
    top_k: int,
    micro_batch_size: int,
    eos_token_id: int | None,
    pad_token_id: int,
) -> torch.Tensor:
    """Sample exactly k tokens per prompt with HF `generate` (min = max new tokens, so EOS can never be emitted).

    Returns responses [N, k]. Sampling uses torch's global RNG, which the caller seeds.
    """
    responses = []
    for sl in micro_slices(input_ids.shape[0], micro_batch_size):
        out = module.generate(
            input_ids=input_ids[sl],
            attention_mask=attention_mask[sl],
            max_new_tokens=response_length,
            min_new_tokens=response_length,
            do_sample=True,
            num_beams=1,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            use_cache=True,
        )
        responses.append(out[:, input_ids.shape[1]:])
    result = torch.cat(responses)
    if result.shape[1] != response_length:
        raise RuntimeError(f"generate returned {result.shape[1]} new tokens, expected exactly {response_length}")
    return result


@torch.no_grad()
def old_log_probs_and_hidden(
    module,
    prompts: torch.Tensor,
    prompt_mask: torch.Tensor,
    responses: torch.Tensor,
    *,
    temperature: float,
    micro_batch_size: int,
    response_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(old_log_probs [N, k], response_hidden [N, k, H]) from a full forward of each (prompt, response) row
    (response mask: all ones for NSP rollouts; up to the first EOS for task rollouts)."""
    log_probs, hidden = [], []
    k = responses.shape[1]
    if response_mask is None:
        response_mask = torch.ones_like(responses)
    for sl in micro_slices(prompts.shape[0], micro_batch_size):
        ids = torch.cat([prompts[sl], responses[sl]], dim=1)
        mask = torch.cat([prompt_mask[sl], response_mask[sl]], dim=1)
        with capture_last_hidden(module) as last_hidden:
            out = _forward(module, ids, mask, **_last_logits_kwargs(module, k + 1))
        log_probs.append(response_log_probs(out.logits[:, -k - 1 :].float(), responses[sl], temperature=temperature))
        hidden.append(last_hidden[0][:, -k:])
    return torch.cat(log_probs), torch.cat(hidden)


def ntp_forward_loss(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, mask_pads: bool) -> torch.Tensor:
    """The model's own NTP loss with `labels` (official); `mask_pads=True` sets pad labels to -100 first (Q6 flag)."""
    labels = ntp_labels(input_ids, attention_mask, mask_pad_in_ntp=True) if mask_pads else input_ids
    return _forward(module, input_ids, attention_mask, labels=labels).loss


def combined_backward(
    module,
    sft: dict[str, torch.Tensor],
    ppo: dict[str, torch.Tensor],
    pair: MiniBatchPair,
    plan: CombinedUpdatePlan,
    *,
    temperature: float,
    mask_pads: bool,
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """Backward of one (NTP mini-batch, PPO mini-batch) pair with the official scaling (spec 2.C steps 2-3).

    NTP: loss x sft_coef / GA_sft per micro-batch; PPO: dual-clip pg x ppo_coef / GA_ppo per micro-batch (scales
    from `refine.nsp.update_plan`). The PPO forward runs the full S + k row with gradients (Q25). Gradients
    accumulate in `module`; the caller zeroes them before and steps the optimiser after. Returns the raw NTP and pg
    losses per micro-batch and the per-micro-batch PPO metrics (clip fractions, KL), as 0-d tensors or floats
    (no host sync per micro-batch; the caller converts once).
    """
    sft_raw, pg_raw, pg_metrics = [], [], {}
    for sl in pair.sft_micro:
        loss = ntp_forward_loss(module, sft["input_ids"][sl], sft["attention_mask"][sl], mask_pads=mask_pads)
        (loss * plan.sft_scale).backward()
        sft_raw.append(loss.detach())
    for sl in pair.ppo_micro:
        responses = ppo["responses"][sl]
        ids = torch.cat([ppo["prompts"][sl], responses], dim=1)
        mask = torch.cat([ppo["prompt_mask"][sl], torch.ones_like(responses)], dim=1)
        k = responses.shape[1]
        logits = _forward(module, ids, mask, **_last_logits_kwargs(module, k + 1)).logits[:, -k - 1 :]
        log_prob = response_log_probs(logits, responses, temperature=temperature)
        response_mask = torch.ones_like(log_prob)
        loss, metrics = ppo_clip_loss(ppo["old_log_probs"][sl], log_prob, ppo["advantages"][sl], response_mask)
        (loss * plan.ppo_scale).backward()
        pg_raw.append(loss.detach())
        for key, value in metrics.items():
            pg_metrics.setdefault(key, []).append(value)
    return sft_raw, pg_raw, pg_metrics


def sft_only_backward(module, sft: dict[str, torch.Tensor], plan: NtpOnlyPlan, *, mask_pads: bool) -> list[float]:
    """NTP-only inner update (`update_policy_sft_ttt`): loss / GA per micro-batch, no coefficient (Q22).

    Returns the raw losses per micro-batch; the caller steps the optimiser once.
    """
    raw = []
    for sl in plan.micro_batches:
        loss = ntp_forward_loss(module, sft["input_ids"][sl], sft["attention_mask"][sl], mask_pads=mask_pads)
        (loss * plan.scale).backward()
        raw.append(float(loss.detach()))
    return raw


@torch.no_grad()
def validation_loss_em(
    module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, micro_batch_size: int,
    generator: torch.Generator | None,
) -> tuple[float, int, int]:
    """Mid-training validation on one worker's rows (spec 1.1, Q13).

    Returns (mean over micro-batches of the model's own NTP loss, matches, counted positions), where a match is a
    token sampled from softmax(logits) at temperature 1 equal to the true next token, counted over positions with
    attention_mask = 1 except the last column.
    """
    losses, matches, counted = [], 0, 0
    for sl in micro_slices(input_ids.shape[0], micro_batch_size):
        ids, mask = input_ids[sl], attention_mask[sl]
        out = _forward(module, ids, mask, labels=ids)
        losses.append(float(out.loss))
        probs = torch.softmax(out.logits[:, :-1].float(), dim=-1)
        sampled = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(ids.shape[0], -1)
        valid = mask[:, :-1].bool()
        matches += int(((sampled == ids[:, 1:]) & valid).sum())
        counted += int(valid.sum())
    return sum(losses) / len(losses), matches, counted


# ---- post-training / TTT (spec 2.B, 2.D) --------------------------------------------------------------------------


def answer_loss(module, prompts, prompt_mask, answers, answer_mask) -> torch.Tensor:
    """Task SFT loss of one micro-batch (spec 2.B): CE over the answer tokens of (left-padded prompt, right-padded
    first answer), padded answer positions ignored, mean over the valid answer tokens."""
    import torch.nn.functional as F

    r = answers.shape[1]
    ids = torch.cat([prompts, answers], dim=1)
    mask = torch.cat([prompt_mask, answer_mask], dim=1)
    logits = _forward(module, ids, mask, **_last_logits_kwargs(module, r + 1)).logits[:, -r - 1 : -1]
    labels = answers.masked_fill(answer_mask == 0, -100)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def task_sft_backward(module, batch: dict[str, torch.Tensor], plan: NtpOnlyPlan) -> list[float]:
    """One task-SFT call: loss / GA per micro-batch (official `update_policy_sft`); returns the raw losses."""
    raw = []
    for sl in plan.micro_batches:
        loss = answer_loss(module, batch["prompts"][sl], batch["prompt_mask"][sl], batch["answers"][sl],
                           batch["answer_mask"][sl])
        (loss * plan.scale).backward()
        raw.append(float(loss.detach()))
    return raw


@torch.no_grad()
def generate_until_eos(
    module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    micro_batch_size: int,
    eos_token_id,
    pad_token_id: int,
    synced: bool,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
) -> torch.Tensor:
    """Decoding of up to `max_new_tokens` (EOS stops a row; finished rows are filled with the pad id), right-padded
    to exactly `max_new_tokens` (spec 2.D; greedy unless `do_sample`). `synced` keeps every rank decoding until all
    are done (HF `synced_gpus`), which FSDP needs when ranks stop at different steps."""
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": max(0, top_k)} if do_sample else {}
    responses = []
    for sl in micro_slices(input_ids.shape[0], micro_batch_size):
        out = module.generate(
            input_ids=input_ids[sl],
            attention_mask=attention_mask[sl],
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_beams=1,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            use_cache=True,
            synced_gpus=synced,
            **sampling,
        )
        new = out[:, input_ids.shape[1] :]
        if new.shape[1] < max_new_tokens:
            filler = torch.full((new.shape[0], max_new_tokens - new.shape[1]), pad_token_id, dtype=new.dtype,
                                device=new.device)
            new = torch.cat([new, filler], dim=1)
        responses.append(new)
    return torch.cat(responses)


def pg_backward(module, batch: dict[str, torch.Tensor], micro_batches, *, scale: float, temperature: float):
    """Task-GRPO policy-gradient backward over `micro_batches` (upstream `update_policy`): dual-clip PPO over the
    response mask (token-mean), x `scale` (1 / GA). Returns raw losses and per-micro-batch metrics."""
    raw, metrics = [], {}
    for sl in micro_batches:
        responses, response_mask = batch["responses"][sl], batch["response_mask"][sl]
        k = responses.shape[1]
        ids = torch.cat([batch["prompts"][sl], responses], dim=1)
        mask = torch.cat([batch["prompt_mask"][sl], response_mask], dim=1)
        logits = _forward(module, ids, mask, **_last_logits_kwargs(module, k + 1)).logits[:, -k - 1 :]
        log_prob = response_log_probs(logits, responses, temperature=temperature)
        loss, pg_metrics = ppo_clip_loss(batch["old_log_probs"][sl], log_prob, batch["advantages"][sl],
                                         response_mask.to(log_prob.dtype), metric_suffix="")
        (loss * scale).backward()
        raw.append(float(loss.detach()))
        for key, value in pg_metrics.items():
            metrics.setdefault(key, []).append(float(value))
    return raw, metrics
