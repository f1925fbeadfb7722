"""What the actor worker computes on its model, as plain functions of an HF causal LM (no Ray, no verl worker).

The worker RPCs in `refine.worker.worker` call these on `self.actor.engine.module` (the FSDP module verl built);
tests call them on a plain HF model. Each function is one worker-side step: the inner loop (spec 2.A Steps 1-4,
2.C), mid-training validation (1.1), the outer task update (2.B) and generation (2.D). Micro-batching follows the
official per-GPU micro-batch sizes (`refine.nsp.update_plan.micro_slices`); all ranks run the same number of
forward and `generate` calls, so FSDP all-gathers stay in lockstep.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from refine.models.last_hidden import capture_last_hidden
from refine.nsp.logprobs import position_entropy, response_log_probs
from refine.nsp.losses import IGNORE_INDEX, ntp_labels, ppo_clip_loss
from refine.nsp.positions import select_positions
from refine.nsp.prefixes import gather_target_hidden
from refine.nsp.update_plan import CombinedUpdatePlan, MiniBatchPair, NtpOnlyPlan, micro_slices


def _rows(n: int, micro_batch_size: int) -> tuple[slice, ...]:
    """The micro-batches of a forward-only pass over n rows."""
    return micro_slices(0, n, max(1, micro_batch_size))


def _forward(module, input_ids, attention_mask, **kwargs):
    return module(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)


@functools.cache
def _keeps_logits(cls) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _continuation_logits(module, prompts, prompt_mask, continuation, continuation_mask) -> torch.Tensor:
    """Forward of (prompt, continuation) rows: the logits of the last R + 1 positions [n, R + 1, V] (R = the
    continuation's length; the first R predict the continuation). With `logits_to_keep` when the model supports it
    (a [rows, S + R, V] logit tensor is gigabytes at S = 16K)."""
    r = continuation.shape[1]
    ids = torch.cat([prompts, continuation], dim=1)
    mask = torch.cat([prompt_mask, continuation_mask], dim=1)
    keep = {"logits_to_keep": r + 1} if _keeps_logits(type(module)) else {}
    return _forward(module, ids, mask, **keep).logits[:, -r - 1 :]


@dataclass
class Analysis:
    """Output of the analysis forward on one worker's rows (spec 2.A Steps 1-2, Q20)."""

    positions: torch.Tensor  # [B, C] rollout starts r
    target_hidden: torch.Tensor  # [B, C, k, H] final-norm hidden states at [r, r + k)


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
) -> Analysis:
    """Full-row forward per micro-batch: entropies -> positions (`select_positions`) -> target hidden states.

    Selection runs per micro-batch with the same generator, which draws exactly what one call on all rows would
    draw (rows are visited in order). Only [B, C, k, H] leaves this function, never [B, S, H].
    """
    positions, targets = [], []
    for sl in _rows(input_ids.shape[0], micro_batch_size):
        with capture_last_hidden(module) as last_hidden:
            out = _forward(module, input_ids[sl], attention_mask[sl])
        entropy = position_entropy(out.logits)  # model dtype, as officially
        r = select_positions(entropy, attention_mask[sl], n_chunks=n_chunks, response_length=response_length,
                             mode=sampling, generator=generator)
        positions.append(r)
        targets.append(gather_target_hidden(last_hidden[0], r, response_length))
    return Analysis(positions=torch.cat(positions), target_hidden=torch.cat(targets))


@torch.no_grad()
def generate(
    module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    micro_batch_size: int,
    eos_token_id,
    pad_token_id: int,
    sampling: dict | None = None,
    exact_length: bool = False,
    synced_gpus: bool | None = None,
) -> torch.Tensor:
    """HF `generate` per micro-batch: the new tokens [N, max_new_tokens].

    `sampling`: None decodes greedily; else `do_sample` with its temperature / top_p / top_k (torch's global RNG,
    which the caller seeds). `exact_length`: min = max new tokens, so EOS can never be emitted (NSP rollouts, spec
    2.A Step 3); otherwise EOS stops a row and finished rows are right-padded with the pad id (spec 2.B, 2.D).
    `synced_gpus`: HF's flag (every rank decodes until all are done, which FSDP needs when ranks stop at different
    steps); None leaves HF's default.
    """
    options = dict(max_new_tokens=max_new_tokens, do_sample=sampling is not None, num_beams=1,
                   eos_token_id=eos_token_id, pad_token_id=pad_token_id, use_cache=True, **(sampling or {}))
    if exact_length:
        options["min_new_tokens"] = max_new_tokens
    if synced_gpus is not None:
        options["synced_gpus"] = synced_gpus
    responses = []
    for sl in _rows(input_ids.shape[0], micro_batch_size):
        new = module.generate(input_ids=input_ids[sl], attention_mask=attention_mask[sl], **options)
        new = new[:, input_ids.shape[1] :]
        if not exact_length and new.shape[1] < max_new_tokens:
            new = F.pad(new, (0, max_new_tokens - new.shape[1]), value=pad_token_id)
        responses.append(new)
    result = torch.cat(responses)
    if result.shape[1] != max_new_tokens:
        raise RuntimeError(f"generate returned {result.shape[1]} new tokens, expected exactly {max_new_tokens}")
    return result


def generate_responses(module, input_ids, attention_mask, *, response_length: int, temperature: float, top_p: float,
                       top_k: int, micro_batch_size: int, eos_token_id, pad_token_id: int) -> torch.Tensor:
    """NSP rollouts (spec 2.A Step 3): exactly k sampled tokens per prompt [N, k] (`generate` with min = max new
    tokens, so EOS can never be emitted)."""
    return generate(module, input_ids, attention_mask, max_new_tokens=response_length,
                    micro_batch_size=micro_batch_size, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                    exact_length=True,
                    sampling={"temperature": temperature, "top_p": top_p, "top_k": top_k})


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
    for sl in _rows(prompts.shape[0], micro_batch_size):
        with capture_last_hidden(module) as last_hidden:
            logits = _continuation_logits(module, prompts[sl], prompt_mask[sl], responses[sl], response_mask[sl])
        log_probs.append(response_log_probs(logits.float(), responses[sl], temperature=temperature))
        hidden.append(last_hidden[0][:, -k:])
    return torch.cat(log_probs), torch.cat(hidden)


# ---- losses and their backward (spec 2.B, 2.C) ---------------------------------------------------------------------


def ntp_forward_loss(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, mask_pads: bool) -> torch.Tensor:
    """The model's own NTP loss with `labels` (official); `mask_pads=True` sets pad labels to -100 first (Q6 flag)."""
    labels = ntp_labels(input_ids, attention_mask, mask_pad_in_ntp=True) if mask_pads else input_ids
    return _forward(module, input_ids, attention_mask, labels=labels).loss


def answer_loss(module, prompts, prompt_mask, answers, answer_mask) -> torch.Tensor:
    """Task SFT loss of one micro-batch (spec 2.B): CE over the answer tokens of (left-padded prompt, right-padded
    first answer), padded answer positions ignored, mean over the valid answer tokens."""
    logits = _continuation_logits(module, prompts, prompt_mask, answers, answer_mask)[:, :-1]
    labels = answers.masked_fill(answer_mask == 0, IGNORE_INDEX)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def policy_loss(module, batch: dict[str, torch.Tensor], sl: slice, *, temperature: float, metric_suffix: str):
    """Dual-clip PPO loss and metrics of rows `sl` of (prompts, prompt_mask, responses, old_log_probs, advantages
    and, for task rollouts, response_mask; NSP rollouts count every response token), from a full forward with
    gradients (Q25)."""
    responses = batch["responses"][sl]
    response_mask = batch["response_mask"][sl] if "response_mask" in batch else torch.ones_like(responses)
    logits = _continuation_logits(module, batch["prompts"][sl], batch["prompt_mask"][sl], responses, response_mask)
    log_prob = response_log_probs(logits, responses, temperature=temperature)
    return ppo_clip_loss(batch["old_log_probs"][sl], log_prob, batch["advantages"][sl],
                         response_mask.to(log_prob.dtype), metric_suffix=metric_suffix)


def backward_each(micro_batches, scale: float, loss_and_metrics) -> tuple[list[torch.Tensor], dict[str, list]]:
    """Backward of `loss * scale` per micro-batch, `loss_and_metrics(slice)` -> (loss, metrics). Gradients
    accumulate in the model; the caller zeroes them before and steps the optimiser after. Returns the raw losses
    (detached 0-d tensors: no host sync per micro-batch) and the metrics, a list per key."""
    raw, metrics = [], {}
    for sl in micro_batches:
        loss, loss_metrics = loss_and_metrics(sl)
        (loss * scale).backward()
        raw.append(loss.detach())
        for key, value in loss_metrics.items():
            metrics.setdefault(key, []).append(value)
    return raw, metrics


def combined_backward(
    module,
    ntp: dict[str, torch.Tensor],
    ppo: dict[str, torch.Tensor],
    pair: MiniBatchPair,
    plan: CombinedUpdatePlan,
    *,
    temperature: float,
    mask_pads: bool,
) -> tuple[list, list, dict[str, list]]:
    """Backward of one (NTP mini-batch, PPO mini-batch) pair with the official scaling (spec 2.C steps 2-3).

    NTP: loss x sft_coef / GA_sft per micro-batch of the documents `ntp` (input_ids, attention_mask); PPO: dual-clip
    pg x ppo_coef / GA_ppo per micro-batch of the rollout rows `ppo` (scales from `refine.nsp.update_plan`).
    Returns the raw NTP and pg losses per micro-batch and the per-micro-batch PPO metrics (clip fractions, KL).
    """
    ntp_raw, _ = backward_each(pair.sft_micro, plan.sft_scale, lambda sl: (ntp_forward_loss(
        module, ntp["input_ids"][sl], ntp["attention_mask"][sl], mask_pads=mask_pads), {}))
    pg_raw, pg_metrics = backward_each(pair.ppo_micro, plan.ppo_scale, lambda sl: policy_loss(
        module, ppo, sl, temperature=temperature, metric_suffix="_ttt"))
    return ntp_raw, pg_raw, pg_metrics


def ntp_only_backward(module, docs: dict[str, torch.Tensor], plan: NtpOnlyPlan, *, mask_pads: bool) -> list:
    """NTP-only inner update (`update_policy_sft_ttt`): loss / GA per micro-batch, no coefficient (Q22).
    Returns the raw losses per micro-batch; the caller steps the optimiser once."""
    raw, _ = backward_each(plan.micro_batches, plan.scale, lambda sl: (ntp_forward_loss(
        module, docs["input_ids"][sl], docs["attention_mask"][sl], mask_pads=mask_pads), {}))
    return raw


def task_sft_backward(module, batch: dict[str, torch.Tensor], plan: NtpOnlyPlan) -> list:
    """One task-SFT call: loss / GA per micro-batch (official `update_policy_sft`); returns the raw losses."""
    raw, _ = backward_each(plan.micro_batches, plan.scale, lambda sl: (answer_loss(
        module, batch["prompts"][sl], batch["prompt_mask"][sl], batch["answers"][sl], batch["answer_mask"][sl]), {}))
    return raw


def task_pg_backward(module, batch: dict[str, torch.Tensor], micro_batches, *, scale: float, temperature: float):
    """Task-GRPO policy-gradient backward over `micro_batches` (upstream `update_policy`): dual-clip PPO over the
    response mask (token-mean), x `scale` (1 / GA). Returns raw losses and per-micro-batch metrics."""
    return backward_each(micro_batches, scale, lambda sl: policy_loss(
        module, batch, sl, temperature=temperature, metric_suffix=""))


# ---- mid-training validation (spec 1.1) ---------------------------------------------------------------------------


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
    for sl in _rows(input_ids.shape[0], micro_batch_size):
        ids, mask = input_ids[sl], attention_mask[sl]
        out = _forward(module, ids, mask, labels=ids)
        losses.append(float(out.loss))
        probs = torch.softmax(out.logits[:, :-1].float(), dim=-1)
        sampled = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(ids.shape[0], -1)
        valid = mask[:, :-1].bool()
        matches += int(((sampled == ids[:, 1:]) & valid).sum())
        counted += int(valid.sum())
    return sum(losses) / len(losses), matches, counted
