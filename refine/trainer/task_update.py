"""The outer loop of post-training (spec 2.B): task SFT on the first gold answer, one optimiser step per global
step (Q23). Task GRPO (`task_ppo_update`, off in every official demo) is refused up front for now."""

from __future__ import annotations

from verl import DataProto

from refine.trainer.nsp_step import rank0_metrics, timed


def task_update(trainer, batch: DataProto) -> dict[str, float]:
    """Run the configured outer update on `batch`; returns its metrics (official names, no `_ttt` suffix)."""
    if not trainer.rc.task_sft_update:
        raise NotImplementedError("refine.task_ppo_update: task GRPO is not implemented in this version")
    data = DataProto.from_dict(
        tensors={key: batch.batch[key] for key in
                 ("input_ids", "attention_mask", "ground_truth_ids", "ground_truth_attention_mask")},
        meta_info={"micro_batch_size": int(trainer.config.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu)},
    )
    timing: dict[str, float] = {}
    with timed(timing, "update_actor_task"):
        out = trainer.actor_rollout_wg.task_sft_update(data)
    return rank0_metrics(out) | {f"timing_s/{key}": value for key, value in timing.items()}
