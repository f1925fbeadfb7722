"""The faithful NSP mode's RPCs (the official algorithm, spec 2.A Steps 1-4, 2.C): one worker call per step, the
re-left-padded prefixes built here from the documents and positions and re-encoded in full.

`FaithfulNspWorkerMixin` is part of `RefineActorWorker` (its helpers `_module`, `_dp_rank`, `_device`, `_tensors`,
`_special_ids` come from the worker); the computations are `refine.worker.model_ops`. The driver's side of the
same step is `refine.driver.nsp_step.faithful_inner_step`.
"""

from __future__ import annotations

import torch
from verl import DataProto
from verl.single_controller.base.decorator import register

from refine.nsp.prefixes import build_rollout_batch
from refine.settings import NspSettings, settings_of
from refine.worker import model_ops
from refine.worker.rpc import ACTOR_DISPATCH, combined_update_loop, combined_update_plan, metrics_reply, worker_seed


class FaithfulNspWorkerMixin:
    """`nsp_analyse`, `nsp_generate`, `nsp_old_log_prob` and `nsp_update` for `RefineActorWorker`."""

    @register(dispatch_mode=ACTOR_DISPATCH)
    def nsp_analyse(self, data: DataProto) -> DataProto:
        """Analysis forward + position selection on this rank's rows (spec 2.A Steps 1-2).

        Settings (`NspSettings`): n_chunks, response_length, sampling, log_prob_micro_batch_size_per_gpu, seed.
        Returns positions [b, C] and target_hidden [b, C, k, H].
        """
        s = settings_of(data, NspSettings)
        input_ids, attention_mask = (t.long() for t in self._tensors(data, "input_ids", "attention_mask"))
        generator = torch.Generator(device=input_ids.device).manual_seed(worker_seed(s.seed, self._dp_rank, 0))
        with self.actor.engine.eval_mode():
            result = model_ops.analyse(
                self._module,
                input_ids,
                attention_mask,
                n_chunks=s.n_chunks,
                response_length=s.response_length,
                sampling=s.sampling,
                micro_batch_size=s.log_prob_micro_batch_size_per_gpu,
                generator=generator,
            )
        return DataProto.from_dict(tensors={"positions": result.positions.cpu(),
                                            "target_hidden": result.target_hidden.cpu()})

    def _rollout_prefixes(self, data: DataProto):
        """This rank's re-left-padded prefixes [b * C * ttt_n, S] built from its documents and positions
        (`build_rollout_batch`: the official layout, built here instead of shipped from the driver)."""
        s = settings_of(data, NspSettings)
        ids, mask, positions = self._tensors(data, "input_ids", "attention_mask", "positions")
        rollout = build_rollout_batch(ids.long(), mask.long(), positions, response_length=s.response_length,
                                      pad_token_id=s.pad_token_id, ttt_n=s.n_per_prefix)
        return rollout.input_ids, rollout.attention_mask

    def _rollout_rows(self, data: DataProto, key: str) -> torch.Tensor:
        """A per-document [b, C * ttt_n, ...] tensor as rollout rows [b * C * ttt_n, ...]."""
        return data.batch[key].to(self._device()).flatten(0, 1)

    @register(dispatch_mode=ACTOR_DISPATCH)
    def nsp_generate(self, data: DataProto) -> DataProto:
        """Exactly k sampled tokens per prefix (spec 2.A Step 3). data: input_ids, attention_mask [b, S], positions
        [b, C]; settings: response_length, n_per_prefix, pad_token_id, temperature, top_p, top_k,
        log_prob_micro_batch_size_per_gpu, seed. Returns responses [b, C * ttt_n, k]."""
        s = settings_of(data, NspSettings)
        prompts, prompt_mask = self._rollout_prefixes(data)
        torch.manual_seed(worker_seed(s.seed, self._dp_rank, 1))
        eos, pad = self._special_ids()
        with self.actor.engine.eval_mode():
            responses = model_ops.generate_responses(
                self._module, prompts, prompt_mask, response_length=s.response_length,
                temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                micro_batch_size=s.log_prob_micro_batch_size_per_gpu, eos_token_id=eos, pad_token_id=pad)
        n_docs = data.batch["input_ids"].shape[0]
        return DataProto.from_dict(tensors={"responses": responses.view(n_docs, -1, responses.shape[1]).cpu()})

    @register(dispatch_mode=ACTOR_DISPATCH)
    def nsp_old_log_prob(self, data: DataProto) -> DataProto:
        """Old log-probs and response hidden states from a full forward of (prefix, response) (spec 2.A Step 4).
        data: input_ids, attention_mask, positions, responses [b, C * ttt_n, k]; settings: response_length,
        n_per_prefix, pad_token_id, temperature, log_prob_micro_batch_size_per_gpu. Returns both per document."""
        s = settings_of(data, NspSettings)
        prompts, prompt_mask = self._rollout_prefixes(data)
        responses = self._rollout_rows(data, "responses")
        k = responses.shape[1]
        with self.actor.engine.eval_mode():
            old_log_probs, hidden = model_ops.old_log_probs_and_hidden(
                self._module,
                prompts,
                prompt_mask,
                responses,
                temperature=s.temperature,
                micro_batch_size=s.log_prob_micro_batch_size_per_gpu,
            )
        n_docs = data.batch["input_ids"].shape[0]
        return DataProto.from_dict(tensors={"old_log_probs": old_log_probs.view(n_docs, -1, k).cpu(),
                                            "response_hidden": hidden.view(n_docs, -1, k, hidden.shape[-1]).cpu()})

    @register(dispatch_mode=ACTOR_DISPATCH)
    def nsp_update(self, data: DataProto) -> DataProto:
        """Combined NTP + PPO update, one optimiser step per (NTP, PPO) mini-batch pair (spec 2.C).

        data: input_ids, attention_mask [b, S], positions [b, C], responses, old_log_probs, advantages
        [b, C * ttt_n, k]. Settings: response_length, n_per_prefix, pad_token_id, mini_batch_size, n_chunks,
        micro_batch_size_per_gpu, sft_coef, ppo_coef, temperature, mask_pads, world_size.
        """
        s = settings_of(data, NspSettings)
        doc_ids, doc_mask = (t.long() for t in self._tensors(data, "input_ids", "attention_mask"))
        prompts, prompt_mask = self._rollout_prefixes(data)
        plan = combined_update_plan(s, doc_ids.shape[0])
        docs = {"input_ids": doc_ids, "attention_mask": doc_mask}
        ppo = {"prompts": prompts, "prompt_mask": prompt_mask,
               **{key: self._rollout_rows(data, key) for key in ("responses", "old_log_probs", "advantages")}}
        metrics = combined_update_loop(self.actor.engine, plan, lambda index, pair: model_ops.combined_backward(
            self._module, docs, ppo, pair, plan, temperature=s.temperature, mask_pads=s.mask_pads))
        return metrics_reply(metrics, "_ttt")
