"""The fast NSP inner step as one worker RPC on the worker's own documents (`refine.nsp_mode=fast`).

The driver sends the documents once; the worker selects positions (the faithful analysis forward), rolls out from
the recurrent states (`fast_ops`), scores, computes GRPO advantages (groups never cross documents, so they are
complete on each rank) and runs the combined update. It returns the update metrics and the small per-row tensors
the driver needs for the official reward / data metrics: nothing of size [rows, S] crosses the boundary.
"""

from __future__ import annotations

import torch
from verl import DataProto
from verl.single_controller.base.decorator import register

from refine.models.state_branching import check_branchable
from refine.nsp.advantages import grpo_advantages
from refine.nsp.prefixes import rollout_uids
from refine.nsp.rewards import all_sequence_rewards, token_level_rewards
from refine.nsp.sampling import eos_ids, sampling_processors
from refine.nsp.update_plan import combined_loss_metrics, normalized_ppo_mini_batch_rows, plan_combined_update
from refine.trainer import fast_ops, model_ops
from refine.trainer.rpc import ACTOR_DISPATCH, memory_metrics, worker_seed



class FastNspWorkerMixin:
    """`nsp_fast_step` for `RefineActorWorker` (helpers `_module`, `_dp_rank`, `_tensors`, `_special_ids` and the
    memory metrics come from the worker)."""

    @register(dispatch_mode=ACTOR_DISPATCH)
    def nsp_fast_step(self, data: DataProto) -> DataProto:
        """Analysis, rollouts, rewards, GRPO and the combined update on this rank's documents.

        data: input_ids, attention_mask [b, S]; optional non-tensor `uid`. meta_info: n_chunks, n_per_prefix,
        response_length, sampling, temperature, top_p, top_k, reward, log_prob_micro_batch_size, seed,
        mini_batch_size, micro_batch_size, sft_coef, ppo_coef, mask_pads, world_size, and optionally `responses`
        (tests: inject rollouts instead of sampling).
        Returns per rollout row: position r, prompt_length, rewards_<kind> (3) [N]; responses, old_log_probs,
        scores, advantages, returns [N, k]; the update's metrics in meta_info.
        """
        meta = data.meta_info
        module, engine = self._module, self.actor.engine
        check_branchable(module)
        ids, mask = self._tensors(data, "input_ids", "attention_mask")
        ids, mask = ids.long(), mask.long()
        n_docs = ids.shape[0]
        k, n_chunks, ttt_n = meta["response_length"], meta["n_chunks"], meta["n_per_prefix"]
        lp_micro = meta["log_prob_micro_batch_size"]
        device = ids.device

        timing: dict[str, float] = {}
        with engine.eval_mode():
            gen = torch.Generator(device=device).manual_seed(worker_seed(meta["seed"], self._dp_rank, 0))
            with fast_ops.timed(timing, "forward"):
                analysis = model_ops.analyse(module, ids, mask, n_chunks=n_chunks, response_length=k,
                                             sampling=meta["sampling"], micro_batch_size=lp_micro, generator=gen)
            positions = analysis.positions
            eos, _ = self._special_ids()
            processors = sampling_processors(temperature=meta["temperature"], top_k=meta["top_k"],
                                             top_p=meta["top_p"], suppress_ids=eos_ids(eos))
            gen = torch.Generator(device=device).manual_seed(worker_seed(meta["seed"], self._dp_rank, 1))
            injected = meta.get("responses")
            rollout = fast_ops.fast_rollout(
                module, ids, mask, positions, ttt_n=ttt_n, response_length=k, temperature=meta["temperature"],
                processors=processors, micro_batch_size=lp_micro, generator=gen,
                responses=None if injected is None else self._rank_rows(injected, n_docs * n_chunks * ttt_n),
                timing=timing,
            )

        target_hidden = analysis.target_hidden.flatten(0, 1).repeat_interleave(ttt_n, dim=0)
        rewards = all_sequence_rewards(rollout.response_hidden, target_hidden, rollout.responses,
                                       rollout.ground_truth_ids)
        response_mask = torch.ones_like(rollout.responses, dtype=torch.float32)
        scores = token_level_rewards(rewards[meta["reward"]], response_mask)
        uid = data.non_tensor_batch.get("uid")
        uids = rollout_uids(n_docs, n_chunks, ttt_n, list(uid) if uid is not None else None)
        advantages, returns = grpo_advantages(scores, response_mask, uids)

        with fast_ops.timed(timing, "update_actor"):
            metrics = self._fast_update(meta, ids, mask, positions, rollout, advantages)
        # the faithful phase names, measured on the worker (`state_pass` is the fast mode's own phase)
        metrics.update({f"timing_s/{key}_ttt": [value] for key, value in timing.items()})
        metrics.update({key: [value] for key, value in memory_metrics("_ttt").items()})

        starts = (mask == 0).sum(dim=1, keepdim=True)
        prompt_length = (positions - starts).flatten().repeat_interleave(ttt_n)
        tensors = {
            "responses": rollout.responses, "scores": scores, "advantages": advantages, "returns": returns,
            "prompt_length": prompt_length, "old_log_probs": rollout.old_log_probs,
            "position": positions.flatten().repeat_interleave(ttt_n),
            **{f"reward_{kind}": value for kind, value in rewards.items()},
        }
        out = DataProto.from_dict(tensors={key: value.detach().cpu() for key, value in tensors.items()})
        out.meta_info = {"metrics": metrics}
        return out

    def _rank_rows(self, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
        """This rank's block of a global [W * n_rows, ...] tensor sent in meta_info."""
        return rows[self._dp_rank * n_rows:(self._dp_rank + 1) * n_rows]

    def _fast_update(self, meta, ids, mask, positions, rollout, advantages) -> dict[str, list[float]]:
        engine = self.actor.engine
        n_docs, n_chunks = positions.shape
        ttt_n = meta["n_per_prefix"]
        m_rows = normalized_ppo_mini_batch_rows(meta["mini_batch_size"], n_chunks=n_chunks, ttt_n=ttt_n,
                                                world_size=meta["world_size"])
        plan = plan_combined_update(n_docs, n_docs * n_chunks * ttt_n, ppo_mini_batch_rows=m_rows,
                                    micro_batch_size=meta["micro_batch_size"], n_chunks=n_chunks, ttt_n=ttt_n,
                                    sft_loss_coef=meta["sft_coef"], ppo_loss_coef=meta["ppo_coef"])
        docs = {"input_ids": ids, "attention_mask": mask}
        ppo = {"positions": positions, "responses": rollout.responses, "old_log_probs": rollout.old_log_probs,
               "advantages": advantages}
        sft_raw, pg_raw, metrics = [], [], {}
        with engine.train_mode(), fast_ops.cache_friendly(self._module):
            for pair in plan.mini_batches:
                engine.optimizer_zero_grad()
                s_raw, p_raw, pg_metrics = fast_ops.fast_backward(
                    self._module, docs, ppo, pair, plan, n_rows_per_doc=n_chunks * ttt_n, ttt_n=ttt_n,
                    temperature=meta["temperature"], mask_pads=meta["mask_pads"],
                )
                sft_raw += s_raw
                pg_raw += p_raw
                for key, values in pg_metrics.items():
                    metrics.setdefault(key, []).extend(values)
                metrics.setdefault("actor/grad_norm_ttt", []).append(float(engine.optimizer_step()))
            lr = engine.lr_scheduler_step()
        metrics.update({key: [value] for key, value in combined_loss_metrics(sft_raw, pg_raw, plan).items()})
        metrics["actor/lr_ttt"] = [float(lr)]
        return metrics
