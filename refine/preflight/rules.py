"""Cross-field rules of a ReFINE config (spec §3 assertions, Q16, Q21, Q30), checked before Ray starts. Each field
on its own is checked by `RefineConfig.__post_init__` (`refine.preflight.schema`).

Each failure is one ValueError naming the key, the value and the fix (`refine.errors.config_error`).
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from refine.errors import config_error
from refine.nsp import positions
from refine.nsp.update_plan import normalized_ppo_mini_batch_rows, plan_combined_update
from refine.preflight.aliases import require
from refine.preflight.fast_mode import check_fast_mode
from refine.preflight.schema import PHASE_FLAGS, RefineConfig
from refine.settings import n_workers


def validate_refine(rc: RefineConfig, config: DictConfig) -> None:
    """Check the refine group against the rest of the config (spec §3 assertions, Q16, Q21, Q30)."""
    # (a val_only run with no flag is a plain evaluation by generation)
    if not any(getattr(rc, flag) for flag in PHASE_FLAGS) and not config.trainer.get("val_only", False):
        config_error(
            "refine.<phase flags>",
            {f: False for f in PHASE_FLAGS},
            "no phase is switched on, so there is nothing to run",
            "set e.g. refine.ttt_sft_update=True refine.ttt_ppo_update=True refine.val_get_loss=True (mid-training)",
        )
    if config.trainer.get("val_only", False) and not config.trainer.get("val_before_train", True):
        config_error("trainer.val_only", True, "val_only acts through the validation before training, which is off "
              "(the run would train instead)", "set trainer.val_before_train=True")
    if rc.task_sft_update and rc.task_ppo_update:
        config_error("refine.task_sft_update/task_ppo_update", (True, True), "exactly one outer update may be on",
              "switch one of them off")
    estimator = OmegaConf.select(config, "algorithm.adv_estimator")
    if estimator != "grpo":
        config_error("algorithm.adv_estimator", estimator, "ReFINE computes GRPO advantages (NSP groups and task GRPO); "
              "another estimator would be ignored", "use algorithm.adv_estimator=grpo")
    engine = OmegaConf.select(config, "actor_rollout_ref.rollout.name")
    if engine != "hf":
        config_error("actor_rollout_ref.rollout.name", engine, "ReFINE rolls out with HF generate inside the actor worker; "
              "no rollout engine is started, so this one would be ignored", "use actor_rollout_ref.rollout.name=hf")
    for key in ("actor_rollout_ref.actor.optim.lr", "actor_rollout_ref.actor.optim.weight_decay"):
        value = OmegaConf.select(config, key)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            config_error(key, value, "must be a finite number", "use a finite value")
    w = n_workers(config)
    inner_train = rc.ttt_sft_update or rc.ttt_ppo_update
    inner_val = rc.val_ttt_sft_update or rc.val_ttt_ppo_update
    ppo = rc.ttt_ppo_update or rc.val_ttt_ppo_update
    if inner_train or inner_val:
        require(rc, ["micro_batch_size_per_gpu", "log_prob_micro_batch_size_per_gpu"], "an inner loop is on")
    if rc.val_get_loss:
        require(rc, ["log_prob_micro_batch_size_per_gpu"], "refine.val_get_loss is on")
    if ppo:
        require(
            rc,
            ["n_chunks", "n_per_prefix", "response_length", "temperature", "reward", "sft_coef", "ppo_coef",
             "mini_batch_size"],
            "NSP-GRPO (ttt_ppo_update / val_ttt_ppo_update) is on",
        )
        check_nsp_sizes(rc, config)

    def check_batch(key: str, batch: int, inner_ppo: bool) -> None:
        if batch % w:
            config_error(key, batch, f"not divisible by the number of workers ({w}, spec Q30)",
                  f"use a multiple of {w} (trainer.n_gpus_per_node x trainer.nnodes)")
        per_rank = batch // w
        lp = rc.log_prob_micro_batch_size_per_gpu
        if lp is not None and per_rank % min(lp, per_rank):
            config_error(key, batch, f"{per_rank} rows per worker are not divisible by the micro-batch "
                  f"refine.log_prob_micro_batch_size_per_gpu={lp} (spec Q30)",
                  "make the per-worker rows a multiple of the micro-batch")
        if inner_ppo:
            rows = per_rank * rc.n_chunks * rc.n_per_prefix
            if lp is not None and rows % min(lp, rows):
                config_error(key, batch, f"{rows} rollout rows per worker are not divisible by "
                      f"refine.log_prob_micro_batch_size_per_gpu={lp} (spec Q30)", "change the batch or micro-batch")
            if batch < rc.mini_batch_size:
                config_error(key, batch, f"smaller than refine.mini_batch_size={rc.mini_batch_size} (spec §3)",
                      f"use a batch >= {rc.mini_batch_size} or lower refine.mini_batch_size")
            # the worker's own update arithmetic (strict: no silently over/under-counted micro-batches, Q21)
            try:
                m_rows = normalized_ppo_mini_batch_rows(rc.mini_batch_size, n_chunks=rc.n_chunks,
                                                        ttt_n=rc.n_per_prefix, world_size=w)
                plan_combined_update(per_rank, rows, ppo_mini_batch_rows=m_rows,
                                     micro_batch_size=rc.micro_batch_size_per_gpu, n_chunks=rc.n_chunks,
                                     ttt_n=rc.n_per_prefix, sft_loss_coef=rc.sft_coef, ppo_loss_coef=rc.ppo_coef)
            except ValueError as exc:
                config_error("refine.mini_batch_size", rc.mini_batch_size,
                      f"the per-worker update of {key}={batch} on {w} worker(s) does not divide evenly ({exc})",
                      "choose mini/micro-batch sizes that divide the per-worker rows (spec 2.C, Q21)")

    if rc.task_ppo_update:  # the upstream actor batch checks run only with task GRPO (spec §3, Q24 d)
        actor, n = config.actor_rollout_ref.actor, int(config.actor_rollout_ref.rollout.n)
        mini_rows, micro = int(actor.ppo_mini_batch_size) * n, int(actor.ppo_micro_batch_size_per_gpu)
        rows = int(config.data.train_batch_size) * n
        if mini_rows % w or (mini_rows // w) % micro or (rows // w) % max(1, mini_rows // w) or rows % w:
            config_error("actor_rollout_ref.actor.ppo_mini_batch_size", int(actor.ppo_mini_batch_size),
                  f"with rollout.n={n} on {w} worker(s) it must give a per-worker mini-batch that is a multiple of "
                  f"ppo_micro_batch_size_per_gpu={micro} and divides the {rows // w} rows per worker",
                  "choose ppo_mini_batch_size / ppo_micro_batch_size_per_gpu accordingly")

    batch = int(config.data.train_batch_size)
    if inner_train or rc.outer_enabled:
        check_batch("data.train_batch_size", batch, rc.ttt_ppo_update)
    val_batch = config.data.get("val_batch_size")
    if val_batch is not None and (inner_val or rc.val_get_loss):
        check_batch("data.val_batch_size", int(val_batch), rc.val_ttt_ppo_update)

    if rc.nsp_mode == "fast":
        check_fast_mode(rc, config)
    warning = cosine_without_ntp_warning(rc)
    if warning:
        print(f"WARNING: {warning}", flush=True)


def cosine_without_ntp_warning(rc: RefineConfig) -> str | None:
    """The one warning line for NSP-GRPO with a cosine reward and no NTP term (`sft_coef=0`, an ablation in the
    paper), else None. Measured on the demo model: that run's cosine reward climbs just as much with the policy
    gradient reversed, while exact match falls and the NTP loss doubles (the reward is computed from the policy's own
    hidden states on both sides, so pulling them together scores as similarity)."""
    ppo = rc.ttt_ppo_update or rc.val_ttt_ppo_update
    if not ppo or rc.sft_coef != 0 or rc.reward not in ("cosine_similarity", "hybrid"):
        return None
    return (f"refine.sft_coef=0 with refine.reward={rc.reward}: the cosine reward compares the policy's own hidden "
            "states, so it can rise without the model learning anything (updates that pull all hidden states "
            "together score as similarity); watch reward/cs_reward_above_chance_mean (the reward minus its chance "
            "level) and reward/binary_reward_mean, not reward/cs_reward_mean")


def check_nsp_sizes(rc: RefineConfig, config: DictConfig) -> None:
    """The NSP size limits of `refine.nsp.positions.validate_nsp_sizes` (k <= the clamp margin, C >= 1,
    S >= margin + k), reported under the key that breaks them."""
    sizes = {"refine.response_length": rc.response_length, "refine.n_chunks": rc.n_chunks,
             "data.max_prompt_length": int(config.data.max_prompt_length)}
    try:
        positions.validate_nsp_sizes(max_prompt_length=sizes["data.max_prompt_length"],
                                     response_length=rc.response_length, n_chunks=rc.n_chunks)
    except ValueError as exc:
        message = str(exc)
        key = next((k for k in ("refine.response_length", "refine.n_chunks") if message.startswith(k[7:])),
                   "data.max_prompt_length")
        config_error(key, sizes[key], message, "change that value (spec Q16: prefixes are clamped to [start+20, S-20])")


def validates_by_generation(rc: RefineConfig, config: DictConfig) -> bool:
    """Whether validation runs (before training, every test_freq steps, or val_only) in the generation mode."""
    trainer = config.trainer
    runs = trainer.get("val_before_train", True) or trainer.get("val_only", False) or int(trainer.test_freq) > 0
    return bool(runs) and not rc.val_get_loss
