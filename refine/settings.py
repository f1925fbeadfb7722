"""The settings the driver sends with each group of worker calls: frozen, typed, picklable, read as attributes.

Built on the driver from the validated `refine:` group (`RefineConfig`) and verl's config, then carried across the
Ray boundary inside the call's `DataProto` under one key (`attach`) and read back on the worker with `settings_of`
(which checks the type). Each field is named after the config key it comes from, so one name means one setting
in every message:

- `NspSettings`: the inner loop (`nsp_analyse`, `nsp_generate`, `nsp_old_log_prob`, `nsp_update`,
  `ntp_only_update`, `nsp_fast_step`), from `refine.*`;
- `TaskSettings`: the outer task update (`task_sft_update`, `task_generate`, `task_old_log_prob`,
  `task_ppo_update`), from `actor_rollout_ref.actor.*`, `actor_rollout_ref.rollout.*` and `data.*`;
- `ValidationSettings`: validation (`val_loss_em`, `generate_greedy`).

This module imports nothing of refine or verl: the driver, the worker and the checks before Ray all read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

SETTINGS_KEY = "settings"  # the one meta_info key of a worker call's settings
S = TypeVar("S")


def _int(value) -> int | None:
    return None if value is None else int(value)


def n_workers(config) -> int:
    """Data-parallel world size of the actor worker group (trainer.n_gpus_per_node x trainer.nnodes)."""
    return int(config.trainer.n_gpus_per_node) * int(config.trainer.nnodes)


@dataclass(frozen=True)
class NspSettings:
    """The inner loop's settings (spec 2.A, 2.C); every field but the last four is the `refine.<field>` key."""

    n_chunks: int | None
    n_per_prefix: int | None
    response_length: int | None
    sampling: str
    temperature: float | None
    top_p: float
    top_k: int
    reward: str | None
    sft_coef: float | None
    ppo_coef: float | None
    mini_batch_size: int | None  # sequences, global (spec 2.C)
    micro_batch_size_per_gpu: int | None  # both parts of the update
    log_prob_micro_batch_size_per_gpu: int | None  # analysis forward, rollouts, old log-probs
    mask_pads: bool  # refine.ntp_pad_mask == "mask"
    world_size: int  # data-parallel ranks of the actor worker group
    pad_token_id: int
    seed: int = 0  # this step's seed (drawn by the driver from its checkpointed RNG)
    responses: Any = None  # tests: [W * N, k] rollouts injected instead of sampling (fast mode)

    @classmethod
    def of(cls, rc, *, world_size: int, pad_token_id: int, seed: int = 0) -> NspSettings:
        """The inner-loop settings of a validated `RefineConfig`."""
        return cls(
            n_chunks=rc.n_chunks, n_per_prefix=rc.n_per_prefix, response_length=rc.response_length,
            sampling=rc.sampling, temperature=rc.temperature, top_p=rc.top_p, top_k=rc.top_k, reward=rc.reward,
            sft_coef=rc.sft_coef, ppo_coef=rc.ppo_coef, mini_batch_size=rc.mini_batch_size,
            micro_batch_size_per_gpu=rc.micro_batch_size_per_gpu,
            log_prob_micro_batch_size_per_gpu=rc.log_prob_micro_batch_size_per_gpu,
            mask_pads=rc.ntp_pad_mask == "mask", world_size=int(world_size), pad_token_id=int(pad_token_id),
            seed=int(seed))


@dataclass(frozen=True)
class TaskSettings:
    """The outer task update's settings (spec 2.B): verl's actor / rollout keys, named after them."""

    ppo_micro_batch_size_per_gpu: int | None  # actor.ppo_micro_batch_size_per_gpu: task SFT and task PPO micro-batches
    ppo_mini_batch_rows: int | None  # actor.ppo_mini_batch_size x rollout.n / workers: task PPO rows per mini-batch
    ppo_epochs: int  # actor.ppo_epochs
    rollout_log_prob_micro_batch_size_per_gpu: int | None  # rollout.log_prob_micro_batch_size_per_gpu
    rollout_n: int  # rollout.n: answers sampled per prompt
    rollout_temperature: float
    rollout_top_p: float
    rollout_top_k: int  # verl's -1 = off (the worker passes max(0, top_k) to HF)
    max_new_tokens: int  # data.max_response_length
    seed: int = 0

    @classmethod
    def of(cls, config, *, seed: int = 0) -> TaskSettings:
        """The task-update settings of a prepared verl config."""
        actor, rollout = config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout
        n, mini = int(rollout.n), actor.ppo_mini_batch_size
        return cls(
            ppo_micro_batch_size_per_gpu=_int(actor.ppo_micro_batch_size_per_gpu),
            ppo_mini_batch_rows=None if mini is None else int(mini) * n // n_workers(config),
            ppo_epochs=int(actor.ppo_epochs),
            rollout_log_prob_micro_batch_size_per_gpu=_int(rollout.log_prob_micro_batch_size_per_gpu),
            rollout_n=n, rollout_temperature=float(rollout.temperature), rollout_top_p=float(rollout.top_p),
            rollout_top_k=int(rollout.top_k), max_new_tokens=int(config.data.max_response_length), seed=int(seed))


@dataclass(frozen=True)
class ValidationSettings:
    """Validation's settings (spec 1.1-1.3): the loss / EM pass and greedy generation."""

    log_prob_micro_batch_size_per_gpu: int | None  # refine.log_prob_micro_batch_size_per_gpu: val_loss_em
    rollout_log_prob_micro_batch_size_per_gpu: int | None  # rollout.log_prob_micro_batch_size_per_gpu: greedy
    max_new_tokens: int  # data.max_response_length, or the batch's largest per-row limit
    seed: int = 0  # the EM draws' seed of this batch

    @classmethod
    def of(cls, rc, config) -> ValidationSettings:
        rollout = config.actor_rollout_ref.rollout
        return cls(log_prob_micro_batch_size_per_gpu=rc.log_prob_micro_batch_size_per_gpu,
                   rollout_log_prob_micro_batch_size_per_gpu=_int(rollout.log_prob_micro_batch_size_per_gpu),
                   max_new_tokens=int(config.data.max_response_length))


def replace(settings: S, **changes) -> S:
    """`settings` with some fields changed (a new frozen object)."""
    return dataclasses.replace(settings, **changes)


def attach(settings) -> dict:
    """The meta_info of a worker call that carries `settings`."""
    return {SETTINGS_KEY: settings}


def settings_of(data, kind: type[S]) -> S:
    """The `kind` settings a worker call's `DataProto` carries; TypeError when it carries none or another kind."""
    value = data.meta_info.get(SETTINGS_KEY)
    if not isinstance(value, kind):
        raise TypeError(f"this worker call needs {kind.__name__} under the meta_info key {SETTINGS_KEY!r}, got "
                        f"{type(value).__name__}")
    return value
