"""The fast NSP inner step as one worker RPC on the worker's own documents (`refine.nsp_mode=fast`).

The driver sends the documents once; the worker runs `fast_step.run_fast_step` on them and returns the update
metrics and the small per-row tensors the driver needs for the official reward / data metrics: nothing of size
[rows, S] crosses the boundary.
"""

from __future__ import annotations

from verl import DataProto
from verl.single_controller.base.decorator import register

from refine.models.state_branching import check_branchable
from refine.trainer.fast_step import run_fast_step
from refine.trainer.rpc import ACTOR_DISPATCH, memory_metrics


class FastNspWorkerMixin:
    """`nsp_fast_step` for `RefineActorWorker` (helpers `_module`, `_dp_rank`, `_tensors`, `_special_ids` come from
    the worker)."""

    @register(dispatch_mode=ACTOR_DISPATCH)
    def nsp_fast_step(self, data: DataProto) -> DataProto:
        """Analysis, rollouts, rewards, GRPO and the combined update on this rank's documents.

        data: input_ids, attention_mask [b, S]; optional non-tensor `uid`. meta_info: see `run_fast_step`, plus
        optionally `responses` [W * N, k] (tests: inject rollouts instead of sampling; this rank's block is used).
        Returns per rollout row: position r, prompt_length, reward_<kind> (3), reward_cosine_chance [N];
        responses, old_log_probs, scores, advantages, returns [N, k]; the update's metrics in meta_info.
        """
        meta = data.meta_info
        check_branchable(self._module)
        ids, mask = self._tensors(data, "input_ids", "attention_mask")
        uid = data.non_tensor_batch.get("uid")
        injected = meta.get("responses")
        if injected is not None:
            n_rows = ids.shape[0] * meta["n_chunks"] * meta["n_per_prefix"]
            injected = injected[self._dp_rank * n_rows:(self._dp_rank + 1) * n_rows].to(ids.device)
        eos, _ = self._special_ids()
        tensors, metrics = run_fast_step(
            self.actor.engine, self._module, ids.long(), mask.long(), meta,
            uids=list(uid) if uid is not None else None, rank=self._dp_rank, eos_token_id=eos, injected=injected)
        metrics.update({key: [value] for key, value in memory_metrics("_ttt").items()})
        out = DataProto.from_dict(tensors={key: value.detach().cpu() for key, value in tensors.items()})
        out.meta_info = {"metrics": metrics}
        return out
