"""One NSP inner step (spec 2.A) as a sequence of worker calls and `refine.nsp` functions: the `nsp_mode` seam.

`inner_step(mode)` returns the implementation for `refine.nsp_mode`, each with the same signature
(worker group, batch, RefineConfig, settings) -> metrics (official names and `timing_s/*`):
- `faithful`: the official algorithm, one RPC per worker-side step, re-left-padded prefixes re-encoded in full;
- `fast`: one RPC (`nsp_fast_step`) per step on the workers' own documents, rollouts branched off the recurrent
  states (`refine.worker.fast.ops`); the driver only turns the returned per-row scalars into the metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from verl import DataProto
from verl.trainer.ppo.metric_utils import compute_data_metrics
from verl.utils.metric import reduce_metrics
from verl.utils.profiler import simple_timer

from refine.nsp.advantages import grpo_advantages
from refine.nsp.prefixes import expand_targets, gather_target_ids, rollout_uids
from refine.nsp.rewards import (
    REWARD_KINDS,
    all_sequence_rewards,
    chance_cosine,
    chance_metrics,
    chance_partners,
    reward_metrics,
    token_level_rewards,
)
from refine.preflight.schema import NSP_MODES, RefineConfig
from refine.settings import NspSettings, attach, replace


@dataclass
class StepSettings:
    """What an inner step needs besides the refine group: sizes of the run and this step's seed (the driver's
    own record of one step; the workers receive the `NspSettings` built from it by `worker_settings`)."""

    world_size: int
    pad_token_id: int
    seed: int
    sft: bool  # NTP part on (ttt_sft_update / val_ttt_sft_update)
    ppo: bool  # NSP-GRPO part on (ttt_ppo_update / val_ttt_ppo_update)
    # tests: `NspSettings` fields set for the fast step, e.g. {"responses": ...} injects the rollouts
    extra_meta: dict = dataclasses.field(default_factory=dict)


def worker_settings(rc: RefineConfig, settings: StepSettings) -> NspSettings:
    """The inner loop's typed settings of this step, as every worker call of the step receives them."""
    return NspSettings.of(rc, world_size=settings.world_size, pad_token_id=settings.pad_token_id, seed=settings.seed)


def rank0_metrics(output: DataProto) -> dict[str, float]:
    """Rank-0 worker metrics reduced like the official `reduce_metrics` (mean; max/min for keys containing them).

    Workers return the meta_info key "metrics" as {key: [values]}; after verl's concat each key holds one entry per
    rank.
    Only rank 0's entry is used, as officially (the first `meta_info` wins, Q29).
    """
    merged = output.meta_info.get("metrics", {})
    rank0 = {key: values[0] for key, values in merged.items()}
    return {key: float(value) for key, value in reduce_metrics(rank0).items()}


def data_metrics_ttt(prompts, prompt_mask, responses, token_rewards, advantages, returns) -> dict[str, float]:
    """verl's `compute_data_metrics` on the rollout batch with `_ttt` appended to every key (spec 1.4)."""
    response_mask = torch.ones_like(responses)
    batch = DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "attention_mask": torch.cat([prompt_mask, response_mask], dim=1),
            "response_mask": response_mask,
            "token_level_scores": token_rewards,
            "token_level_rewards": token_rewards,
            "advantages": advantages,
            "returns": returns,
        }
    )
    return {f"{key}_ttt": value for key, value in compute_data_metrics(batch, use_critic=False).items()}


def wire_documents(batch: DataProto) -> dict[str, torch.Tensor]:
    """The documents as they cross to the workers: int32 ids and a bool mask (the workers widen them)."""
    return {"input_ids": batch.batch["input_ids"].to(torch.int32), "attention_mask": batch.batch["attention_mask"].bool()}


def prompt_mask_from_lengths(prompt_length: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[N, S] right-aligned 0/1 mask of `prompt_length` real tokens: what verl's data metrics read prompt
    lengths from, without materialising the prefixes."""
    return (torch.arange(seq_len).unsqueeze(0) >= (seq_len - prompt_length).unsqueeze(1)).long()


def faithful_inner_step(wg, batch: DataProto, rc: RefineConfig, settings: StepSettings) -> dict[str, float]:
    """The official inner loop on `batch` (input_ids, attention_mask; non-tensor `uid`), one worker RPC per step.

    The official semantics are kept (every re-left-padded prefix re-encoded in full by `generate`, the old-log-prob
    forward and the update), but the prefixes are built on the workers from the documents and positions
    (`build_rollout_batch`), so nothing of size [B * C, S] crosses the driver-worker boundary. Per-row tensors
    travel per document ([B, C * ttt_n, ...]) so they split over the ranks with their documents.
    """
    if not settings.ppo:
        return ntp_only_step(wg, batch, rc, settings)
    timing: dict[str, float] = {}
    metrics: dict[str, float] = {}
    k, n_chunks, ttt_n = rc.response_length, rc.n_chunks, rc.n_per_prefix
    n_docs, seq_len = batch.batch["input_ids"].shape
    rows_per_doc = n_chunks * ttt_n
    docs = wire_documents(batch)
    step_settings = worker_settings(rc, settings)  # the same settings for every call of the step

    def per_doc(rows: torch.Tensor) -> torch.Tensor:  # [N, ...] -> [B, C * ttt_n, ...]
        return rows.reshape(n_docs, rows_per_doc, *rows.shape[1:])

    # Steps 1-2: analysis forward and position selection on the workers: positions and target hidden states only
    analyse_in = DataProto.from_dict(tensors=docs, meta_info=attach(step_settings))
    with simple_timer("forward_ttt", timing):
        analysis = wg.nsp_analyse(analyse_in)
    positions = analysis.batch["positions"]
    target_hidden = expand_targets(analysis.batch["target_hidden"], ttt_n)
    uid = batch.non_tensor_batch.get("uid")
    uids = rollout_uids(n_docs, n_chunks, ttt_n, list(uid) if uid is not None else None)
    ground_truth = expand_targets(gather_target_ids(batch.batch["input_ids"], positions, k), ttt_n)

    # Step 3: rollouts: exactly k sampled tokens per (worker-built) prefix
    gen_in = DataProto.from_dict(tensors={**docs, "positions": positions}, meta_info=attach(step_settings))
    with simple_timer("gen_ttt", timing):
        responses = wg.nsp_generate(gen_in).batch["responses"].flatten(0, 1)

    # Step 4: old log-probs and response hidden states
    lp_in = DataProto.from_dict(tensors={**docs, "positions": positions, "responses": per_doc(responses)},
                                meta_info=attach(step_settings))
    with simple_timer("old_log_prob_ttt", timing):
        lp_out = wg.nsp_old_log_prob(lp_in)
    old_log_probs = lp_out.batch["old_log_probs"].flatten(0, 1)
    response_hidden = lp_out.batch["response_hidden"].flatten(0, 1)

    # Steps 5-6: rewards (all three logged) and GRPO advantages over the uid groups
    rewards = all_sequence_rewards(response_hidden, target_hidden, responses, ground_truth)
    response_mask = torch.ones_like(responses, dtype=torch.float32)
    scores = token_level_rewards(rewards[rc.reward], response_mask)
    advantages, returns = grpo_advantages(scores, response_mask, uids)
    metrics.update(reward_metrics(rewards))
    chance = chance_cosine(response_hidden, target_hidden, chance_partners(n_docs, n_chunks, ttt_n))
    metrics.update(chance_metrics(rewards["cosine_similarity"], chance))
    starts = (batch.batch["attention_mask"] == 0).sum(dim=1, keepdim=True)
    prompt_mask = prompt_mask_from_lengths(expand_targets(positions - starts, ttt_n), seq_len)
    metrics.update(data_metrics_ttt(prompt_mask, prompt_mask, responses, scores, advantages, returns))

    # Step 7: combined NTP + PPO update
    update_in = DataProto.from_dict(
        tensors={**docs, "positions": positions, "responses": per_doc(responses),
                 "old_log_probs": per_doc(old_log_probs), "advantages": per_doc(advantages)},
        # official: with PPO on, the NTP part always runs with its coefficient (update_policy_ppo_ttt)
        meta_info=attach(step_settings),
    )
    with simple_timer("update_actor_ttt", timing):
        update_out = wg.nsp_update(update_in)
    metrics.update(rank0_metrics(update_out))
    return metrics | {f"timing_s/{k_}": v for k_, v in timing.items()}


def ntp_only_step(wg, batch: DataProto, rc: RefineConfig, settings: StepSettings) -> dict[str, float]:
    """The NTP-only inner update (ttt_ppo_update off): one RPC, the same in every NSP mode."""
    timing: dict[str, float] = {}
    docs = DataProto.from_dict(tensors=wire_documents(batch), meta_info=attach(worker_settings(rc, settings)))
    with simple_timer("update_actor_ttt", timing):
        out = wg.ntp_only_update(docs)
    return rank0_metrics(out) | {f"timing_s/{k}": v for k, v in timing.items()}


def fast_inner_step(wg, batch: DataProto, rc: RefineConfig, settings: StepSettings) -> dict[str, float]:
    """The inner step with rollouts branched off the recurrent states: one worker RPC (`nsp_fast_step`).

    Same objective, metric names and update arithmetic as `faithful_inner_step`; see `refine.worker.fast.ops`
    for where the numerics differ. The driver sends the documents (int32 ids, bool mask) once.
    """
    if not settings.ppo:
        return ntp_only_step(wg, batch, rc, settings)
    timing: dict[str, float] = {}
    docs = DataProto.from_dict(
        tensors=wire_documents(batch),
        non_tensors={key: value for key, value in batch.non_tensor_batch.items() if key == "uid"},
        meta_info=attach(replace(worker_settings(rc, settings), **settings.extra_meta)),
    )
    with simple_timer("nsp_step_ttt", timing):  # the phases are timed on the workers (rank 0's figures)
        out = wg.nsp_fast_step(docs)
    rows = out.batch
    metrics = rank0_metrics(out)
    rewards = {kind: rows[f"reward_{kind}"] for kind in REWARD_KINDS}
    metrics.update(reward_metrics(rewards))
    metrics.update(chance_metrics(rows["reward_cosine_similarity"], rows["reward_cosine_chance"]))
    prompt_mask = prompt_mask_from_lengths(rows["prompt_length"], batch.batch["input_ids"].shape[1])
    metrics.update(data_metrics_ttt(prompt_mask, prompt_mask, rows["responses"], rows["scores"], rows["advantages"],
                                    rows["returns"]))
    return metrics | {f"timing_s/{k_}": v for k_, v in timing.items()}


NSP_STEPS: dict[str, Callable] = {"faithful": faithful_inner_step, "fast": fast_inner_step}
assert set(NSP_STEPS) == set(NSP_MODES), "refine.preflight.schema.NSP_MODES and NSP_STEPS must name the same modes"


def inner_step(mode: str) -> Callable:
    """The inner-step implementation for `refine.nsp_mode`."""
    if mode not in NSP_STEPS:
        raise ValueError(f"refine.nsp_mode={mode!r}: unknown; available: {sorted(NSP_STEPS)}")
    return NSP_STEPS[mode]

