"""The fast NSP inner step on one rank's documents (`refine.nsp_mode=fast`), as one plain function of the model
and an engine-like object, so the worker RPC (`fast_worker`) and the benchmark run the same code.

Selects positions (the faithful analysis forward), rolls out from the recurrent states (`fast_ops`), scores,
computes GRPO advantages (groups never cross documents, so they are complete on each rank) and runs the combined
update (`fast_update`); documents of the first update pair are rolled out inside it.

`engine` needs verl's engine methods: eval_mode(), train_mode(), optimizer_zero_grad(), optimizer_step() ->
grad norm, lr_scheduler_step() -> lr.
"""

from __future__ import annotations

import torch

from refine.nsp.advantages import grpo_advantages
from refine.nsp.prefixes import expand_targets, gather_target_ids, rollout_uids
from refine.nsp.rewards import (
    REWARD_KINDS,
    all_sequence_rewards,
    chance_cosine,
    chance_partners,
    token_level_rewards,
)
from refine.nsp.sampling import eos_ids, sampling_processors
from refine.settings import NspSettings
from refine.worker import model_ops
from refine.worker.fast import ops as fast_ops
from refine.worker.fast.update import InlineRollout, fast_backward
from refine.worker.rpc import combined_update_loop, combined_update_plan, worker_seed


def run_fast_step(engine, module, ids: torch.Tensor, mask: torch.Tensor, settings: NspSettings, *, uids=None,
                  rank: int = 0, eos_token_id=None, injected: torch.Tensor | None = None) -> tuple[dict, dict]:
    """One fast inner step on [b, S] documents. Returns (per-row tensors, metrics {key: [values]}).

    settings: every field of `NspSettings` but pad_token_id (the fast mode never pads a prefix).
    `injected` [N, k] replaces sampling (tests).
    """
    n_docs = ids.shape[0]
    k, n_chunks, ttt_n = settings.response_length, settings.n_chunks, settings.n_per_prefix
    lp_micro = settings.log_prob_micro_batch_size_per_gpu
    device = ids.device
    timing: dict[str, float] = {"state_pass": 0.0, "gen": 0.0, "old_log_prob": 0.0}
    with engine.eval_mode():
        gen = torch.Generator(device=device).manual_seed(worker_seed(settings.seed, rank, 0))
        with fast_ops.timed(timing, "forward"):
            analysis = model_ops.analyse(module, ids, mask, n_chunks=n_chunks, response_length=k,
                                         sampling=settings.sampling, micro_batch_size=lp_micro, generator=gen)
    positions = analysis.positions
    rows_per_doc, n_rows = n_chunks * ttt_n, n_docs * n_chunks * ttt_n
    plan = combined_update_plan(settings, n_docs)
    step = _StepRows(
        targets=analysis.target_hidden.flatten(0, 1).repeat_interleave(ttt_n, dim=0),
        ground_truth=expand_targets(gather_target_ids(ids, positions, k), ttt_n),
        uids=rollout_uids(n_docs, n_chunks, ttt_n, uids),
        partners=chance_partners(n_docs, n_chunks, ttt_n).to(device),
        reward=settings.reward, n_rows=n_rows, k=k, device=device,
    )
    processors = sampling_processors(temperature=settings.temperature, top_k=settings.top_k,
                                     top_p=settings.top_p, suppress_ids=eos_ids(eos_token_id))
    sampler = torch.Generator(device=device).manual_seed(worker_seed(settings.seed, rank, 1))

    # documents updated after the first optimiser step are rolled out now, from the current weights
    later = slice(plan.mini_batches[0].sft.stop, n_docs)
    if later.start < later.stop:
        rows = slice(later.start * rows_per_doc, n_rows)
        with engine.eval_mode():
            rollout = fast_ops.fast_rollout(
                module, ids[later], mask[later], positions[later], ttt_n=ttt_n, response_length=k,
                temperature=settings.temperature, processors=processors, micro_batch_size=lp_micro,
                generator=sampler, responses=None if injected is None else injected[rows], timing=timing)
        step.responses[rows], step.old_log_probs[rows] = rollout.responses, rollout.old_log_probs
        step.advantages[rows] = step.score(rows, rollout.response_hidden, rollout.responses)

    def decode(branches, first_tokens):  # the first pair's rollouts, from the update's own states
        if injected is not None:
            return injected[step.next_rows(len(first_tokens))]
        module.eval()
        try:
            return fast_ops.decode_branches(module, branches, first_tokens, response_length=k,
                                            processors=processors, generator=sampler)
        finally:
            module.train()

    inline = InlineRollout(decode=decode, score=step.score, timing=timing)
    gen_before = timing["gen"]
    with fast_ops.timed(timing, "update_actor"):
        metrics = _update(engine, module, settings, plan, ids, mask, positions, step, inline)
    timing["update_actor"] -= timing["gen"] - gen_before  # decoding inside the update is reported as gen
    # the faithful phase names, measured on the worker (`state_pass` is the fast mode's own phase)
    metrics.update({f"timing_s/{key}_ttt": [value] for key, value in timing.items()})

    starts = (mask == 0).sum(dim=1, keepdim=True)
    prompt_length = (positions - starts).flatten().repeat_interleave(ttt_n)
    tensors = {
        "responses": step.responses, "scores": step.scores, "advantages": step.advantages,
        "returns": step.returns, "prompt_length": prompt_length, "old_log_probs": step.old_log_probs,
        "position": positions.flatten().repeat_interleave(ttt_n),
        **{f"reward_{kind}": value for kind, value in step.rewards.items()},
        "reward_cosine_chance": step.chance,
    }
    return tensors, metrics


def _update(engine, module, settings, plan, ids, mask, positions, step, inline) -> dict[str, list[float]]:
    n_chunks, ttt_n = positions.shape[1], settings.n_per_prefix
    docs = {"input_ids": ids, "attention_mask": mask}
    ppo = {"positions": positions, "responses": step.responses, "old_log_probs": step.old_log_probs,
           "advantages": step.advantages}
    with fast_ops.cache_friendly(module) as checkpointed:
        return combined_update_loop(engine, plan, lambda index, pair: fast_backward(
            module, docs, ppo, pair, plan, n_rows_per_doc=n_chunks * ttt_n, ttt_n=ttt_n,
            temperature=settings.temperature, mask_pads=settings.mask_pads, inline=inline if index == 0 else None,
            checkpoint=checkpointed))


class _StepRows:
    """The per-row results of one fast step on this rank, filled in as documents are rolled out and scored."""

    def __init__(self, *, targets, ground_truth, uids, partners, reward, n_rows, k, device):
        self.targets, self.ground_truth, self.uids, self.reward = targets, ground_truth, uids, reward
        self.partners = partners  # chance-level partner rows (`chance_partners`): every target is on this rank
        self.responses = torch.zeros(n_rows, k, dtype=torch.long, device=device)
        self.old_log_probs = torch.zeros(n_rows, k, device=device)
        self.advantages = torch.zeros(n_rows, k, device=device)
        self.scores = torch.zeros(n_rows, k, device=device)
        self.returns = torch.zeros(n_rows, k, device=device)
        self.rewards = {kind: torch.zeros(n_rows, device=device) for kind in REWARD_KINDS}
        self.chance = torch.zeros(n_rows, device=device)
        self._consumed = 0

    def next_rows(self, count: int) -> slice:
        """The next `count` rows in update order (injected responses are read in that order)."""
        rows = slice(self._consumed, self._consumed + count)
        self._consumed += count
        return rows

    def score(self, rows: slice, response_hidden, responses):
        """Rewards of `rows` (all three kinds) and the cosine's chance level, token-level scores and GRPO
        advantages (groups inside documents)."""
        rewards = all_sequence_rewards(response_hidden, self.targets[rows], responses, self.ground_truth[rows])
        for kind, value in rewards.items():
            self.rewards[kind][rows] = value
        self.chance[rows] = chance_cosine(response_hidden, self.targets, self.partners[rows])
        mask = torch.ones_like(responses, dtype=torch.float32)
        self.scores[rows] = token_level_rewards(rewards[self.reward], mask)
        self.advantages[rows], self.returns[rows] = grpo_advantages(self.scores[rows], mask, self.uids[rows])
        return self.advantages[rows]
