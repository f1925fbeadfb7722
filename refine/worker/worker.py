"""`RefineActorWorker`: verl's `ActorRolloutRefWorker` plus one `@register` RPC per worker-side ReFINE step.

Every RPC is dispatched with `make_nd_compute_dataproto_dispatch_fn("actor")` (rows split evenly over the
data-parallel ranks, outputs concatenated in rank order; the metrics of a reply become one entry per rank) and
runs on `self.actor.engine.module`, the FSDP module verl built. Each call carries one typed settings object
(`refine.settings`: `NspSettings`, `TaskSettings`, `ValidationSettings`), read with `settings_of`. The
computations themselves are the plain functions of `refine.worker.model_ops`.
"""

from __future__ import annotations

import copy

import torch
from verl import DataProto
from verl.single_controller.base.decorator import Dispatch, register
from verl.utils.device import get_device_id
from verl.utils.torch_functional import get_response_mask
from verl.workers.engine_workers import ActorRolloutRefWorker

from refine.nsp.update_plan import micro_slices, ntp_only_loss_metrics, plan_ntp_only_update
from refine.settings import NspSettings, TaskSettings, ValidationSettings, settings_of
from refine.verbosity import quiet_progress_bars, quiet_stdout
from refine.worker import model_ops
from refine.worker.faithful.rpcs import FaithfulNspWorkerMixin
from refine.worker.fast.rpcs import FastNspWorkerMixin
from refine.worker.rpc import (
    ACTOR_DISPATCH,
    metrics_reply,
    one_entry_each,
    optimizer_steps,
    worker_seed,
)


class RefineActorWorker(FaithfulNspWorkerMixin, FastNspWorkerMixin, ActorRolloutRefWorker):
    """Actor worker with the ReFINE inner-loop RPCs (run it with role "actor": no rollout engine is built)."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        """verl's model and optimiser set-up without its start-up chatter on the console: parameter count, memory
        before and after FSDP, "MFU will always be zero" (verl's FLOP counter knows no fast-weight model; ReFINE
        logs no MFU), the weights' loading bar. REFINE_VERBOSE=1 shows it; a failure prints it on stderr."""
        with quiet_stdout(), quiet_progress_bars():
            super().init_model()

    # ---- helpers -------------------------------------------------------------------------------------------
    @property
    def _module(self):
        return self.actor.engine.module

    @property
    def _dp_rank(self) -> int:
        return self.actor.engine.get_data_parallel_rank()

    def _device(self):
        return get_device_id()

    def _tensors(self, data: DataProto, *keys: str) -> list[torch.Tensor]:
        device = self._device()
        return [data.batch[key].to(device) for key in keys]

    def _special_ids(self):
        gen = getattr(self._module, "generation_config", None)
        cfg = getattr(self._module, "config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        if eos is None and cfg is not None:
            eos = getattr(cfg, "eos_token_id", None)
        pad = getattr(gen, "pad_token_id", None) if gen is not None else None
        if pad is None:
            pad = eos[0] if isinstance(eos, list) else eos
        return eos, pad

    def _generate_until_eos(self, data: DataProto, max_new_tokens: int, micro_batch_size: int,
                            sampling: dict | None = None) -> torch.Tensor:
        """Responses [n, max_new_tokens] to this rank's prompts, EOS stopping a row, ranks kept in lockstep."""
        prompts, prompt_mask = self._tensors(data, "input_ids", "attention_mask")
        eos, pad = self._special_ids()
        synced = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
        with self.actor.engine.eval_mode():
            return model_ops.generate(
                self._module, prompts, prompt_mask, max_new_tokens=max_new_tokens,
                micro_batch_size=micro_batch_size, eos_token_id=eos, pad_token_id=pad,
                sampling=sampling, synced_gpus=synced)

    def _one_step_update(self, plan, backward, loss_metrics, suffix: str) -> DataProto:
        """One optimiser step over all micro-batches of `plan`: `backward()` -> raw losses per micro-batch,
        `loss_metrics(raw, plan)` -> the logged losses."""
        raw = []

        def backward_step(_index: int) -> dict:
            raw.extend(backward())
            return {}

        metrics = optimizer_steps(self.actor.engine, 1, backward_step, suffix)
        return metrics_reply(metrics | one_entry_each(loss_metrics(raw, plan)), suffix)

    @register(dispatch_mode=ACTOR_DISPATCH)
    def ntp_only_update(self, data: DataProto) -> DataProto:
        """NTP-only inner update (ttt_ppo_update off): loss / GA, one optimiser step, no coefficient (Q22).
        data: input_ids, attention_mask [b, S]; settings: micro_batch_size_per_gpu, mask_pads."""
        s = settings_of(data, NspSettings)
        ids, mask = (t.long() for t in self._tensors(data, "input_ids", "attention_mask"))
        plan = plan_ntp_only_update(ids.shape[0], micro_batch_size=s.micro_batch_size_per_gpu)
        docs = {"input_ids": ids, "attention_mask": mask}
        return self._one_step_update(
            plan, lambda: model_ops.ntp_only_backward(self._module, docs, plan, mask_pads=s.mask_pads),
            ntp_only_loss_metrics, "_ttt")

    # ---- post-training: outer task update (spec 2.B) ---------------------------------------------------------
    @register(dispatch_mode=ACTOR_DISPATCH)
    def task_sft_update(self, data: DataProto) -> DataProto:
        """Task SFT, one optimiser step over this rank's rows (official `update_actor_sft`, Q23).

        data: input_ids / attention_mask (prompts), ground_truth_ids / ground_truth_attention_mask (first answer).
        Settings (`TaskSettings`): ppo_micro_batch_size_per_gpu. Metrics without the `_ttt` suffix.
        """
        s = settings_of(data, TaskSettings)
        prompts, prompt_mask, answers, answer_mask = self._tensors(
            data, "input_ids", "attention_mask", "ground_truth_ids", "ground_truth_attention_mask"
        )
        plan = plan_ntp_only_update(prompts.shape[0], micro_batch_size=s.ppo_micro_batch_size_per_gpu)
        batch = {"prompts": prompts, "prompt_mask": prompt_mask, "answers": answers, "answer_mask": answer_mask}

        def loss_metrics(raw, plan):
            return ntp_only_loss_metrics(raw, plan, key="actor/sft_loss", raw_key="actor/sft_loss_raw")

        return self._one_step_update(plan, lambda: model_ops.task_sft_backward(self._module, batch, plan),
                                     loss_metrics, "")

    # ---- validation by generation and TTT state (spec 2.D, Q1) --------------------------------------------------
    @register(dispatch_mode=ACTOR_DISPATCH)
    def generate_greedy(self, data: DataProto) -> DataProto:
        """Greedy responses [n, R] (EOS stops; right-padded with the pad id). Settings (`ValidationSettings`):
        max_new_tokens, rollout_log_prob_micro_batch_size_per_gpu."""
        s = settings_of(data, ValidationSettings)
        responses = self._generate_until_eos(data, s.max_new_tokens, s.rollout_log_prob_micro_batch_size_per_gpu)
        return DataProto.from_dict(tensors={"responses": responses.cpu()})

    @register(dispatch_mode=ACTOR_DISPATCH)
    def task_generate(self, data: DataProto) -> DataProto:
        """Task rollouts: sampled (rollout.temperature / top_p / top_k) up to max_new_tokens, EOS stops (spec 2.B).
        Settings (`TaskSettings`): max_new_tokens, rollout_log_prob_micro_batch_size_per_gpu, rollout_temperature,
        rollout_top_p, rollout_top_k, seed. Returns responses [n, R] and response_mask (up to and including the
        first EOS)."""
        s = settings_of(data, TaskSettings)
        torch.manual_seed(worker_seed(s.seed, self._dp_rank, 3))
        # verl's rollout top_k = -1 means off, as HF's 0
        sampling = {"temperature": s.rollout_temperature, "top_p": s.rollout_top_p, "top_k": max(0, s.rollout_top_k)}
        responses = self._generate_until_eos(data, s.max_new_tokens, s.rollout_log_prob_micro_batch_size_per_gpu,
                                             sampling)
        eos, pad = self._special_ids()
        response_mask = get_response_mask(responses, eos_token=eos if eos is not None else pad)
        return DataProto.from_dict(tensors={"responses": responses.cpu(), "response_mask": response_mask.cpu()})

    @register(dispatch_mode=ACTOR_DISPATCH)
    def task_old_log_prob(self, data: DataProto) -> DataProto:
        """Old log-probs [n, R] of task rollouts. Settings: rollout_temperature,
        rollout_log_prob_micro_batch_size_per_gpu."""
        s = settings_of(data, TaskSettings)
        prompts, prompt_mask, responses, response_mask = self._tensors(
            data, "input_ids", "attention_mask", "responses", "response_mask"
        )
        with self.actor.engine.eval_mode():
            old_log_probs, _ = model_ops.old_log_probs_and_hidden(
                self._module, prompts, prompt_mask, responses, temperature=s.rollout_temperature,
                micro_batch_size=s.rollout_log_prob_micro_batch_size_per_gpu, response_mask=response_mask,
            )
        return DataProto.from_dict(tensors={"old_log_probs": old_log_probs.cpu()})

    @register(dispatch_mode=ACTOR_DISPATCH)
    def task_ppo_update(self, data: DataProto) -> DataProto:
        """Task GRPO update (upstream `update_policy`): per epoch, mini-batches of ppo_mini_batch_size x n / W rows,
        micro-batches of ppo_micro_batch_size_per_gpu, loss / GA, one optimiser step per mini-batch; the scheduler
        steps once. Settings: ppo_mini_batch_rows, ppo_micro_batch_size_per_gpu, ppo_epochs, rollout_temperature."""
        s = settings_of(data, TaskSettings)
        prompts, prompt_mask, responses, response_mask, old_lp, adv = self._tensors(
            data, "input_ids", "attention_mask", "responses", "response_mask", "old_log_probs", "advantages"
        )
        batch = {"prompts": prompts, "prompt_mask": prompt_mask, "responses": responses,
                 "response_mask": response_mask, "old_log_probs": old_lp, "advantages": adv}
        mini, micro = s.ppo_mini_batch_rows, s.ppo_micro_batch_size_per_gpu
        mini_batches = micro_slices(0, prompts.shape[0], mini) * s.ppo_epochs

        def backward_step(index: int) -> dict:
            rows = mini_batches[index]
            raw, pg_metrics = model_ops.task_pg_backward(
                self._module, batch, micro_slices(rows.start, rows.stop, micro), scale=1.0 / (mini // micro),
                temperature=s.rollout_temperature)
            return {"actor/pg_loss": raw, **pg_metrics}

        return metrics_reply(optimizer_steps(self.actor.engine, len(mini_batches), backward_step, ""), "")

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def snapshot_state(self) -> None:
        """Keep a copy of this rank's weights, optimiser and scheduler state (for `refine.ttt_reset=batch`)."""
        engine = self.actor.engine
        self._ttt_snapshot = {
            "model": {key: value.detach().clone() for key, value in engine.module.state_dict().items()},
            "optimizer": copy.deepcopy(engine.optimizer.state_dict()),
            "lr_scheduler": copy.deepcopy(engine.lr_scheduler.state_dict()),
        }

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def restore_state(self) -> None:
        """Put back the state kept by `snapshot_state` (bit for bit)."""
        engine = self.actor.engine
        snapshot = self._ttt_snapshot
        engine.module.load_state_dict(snapshot["model"])
        engine.optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
        engine.lr_scheduler.load_state_dict(copy.deepcopy(snapshot["lr_scheduler"]))

    # ---- validation ----------------------------------------------------------------------------------------
    @register(dispatch_mode=ACTOR_DISPATCH)
    def val_loss_em(self, data: DataProto) -> DataProto:
        """Mid-training validation (spec 1.1): per row, this rank's micro-mean loss and EM counts.
        Settings (`ValidationSettings`): log_prob_micro_batch_size_per_gpu, seed."""
        s = settings_of(data, ValidationSettings)
        input_ids, attention_mask = self._tensors(data, "input_ids", "attention_mask")
        generator = torch.Generator(device=input_ids.device).manual_seed(worker_seed(s.seed, self._dp_rank, 2))
        with self.actor.engine.eval_mode():
            loss, matches, counted = model_ops.validation_loss_em(
                self._module, input_ids, attention_mask, micro_batch_size=s.log_prob_micro_batch_size_per_gpu, generator=generator
            )
        n = input_ids.shape[0]
        return DataProto.from_dict(
            tensors={
                "val_loss": torch.full((n,), loss),
                # counts on the first row of this rank, zeros elsewhere, so sums over rows are exact
                "em_matches": torch.tensor([matches] + [0] * (n - 1), dtype=torch.long),
                "em_counted": torch.tensor([counted] + [0] * (n - 1), dtype=torch.long),
            }
        )
