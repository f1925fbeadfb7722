"""Validation by phase (spec 1.1-1.3): mid-training loss/EM here; generation and test-time training (issue 8)
plug in as further modes of `validate`."""

from __future__ import annotations

import numpy as np
from verl import DataProto

from refine.trainer.worker import worker_seed


def validate(trainer) -> dict[str, float]:
    """The validation metrics of `trainer` for its phase flags."""
    rc = trainer.rc
    if rc.val_get_loss:
        return validate_loss(trainer)
    raise NotImplementedError(
        "validation by generation / test-time training (val_get_loss=False) arrives with post-training and TTT"
    )


def validate_loss(trainer) -> dict[str, float]:
    """Mid-training validation (val_get_loss): `val_loss` and `val_em_score`, each averaged over validation batches.

    Per batch: val_loss = mean over rows of each rank's micro-batch-mean NTP loss (the model's own loss); val_em_score
    = matches of tokens sampled at temperature 1 over counted positions (mask = 1, last column excluded). No weights
    change; the sampling draws are seeded from refine.seed and the step, apart from the training RNG.
    """
    rc = trainer.rc
    losses, ems = [], []
    for index, batch_dict in enumerate(trainer.val_dataloader):
        batch = DataProto.from_single_dict(batch_dict)
        data = DataProto.from_dict(
            tensors={"input_ids": batch.batch["input_ids"], "attention_mask": batch.batch["attention_mask"]},
            meta_info={
                "micro_batch_size": rc.log_prob_micro_batch_size_per_gpu,
                "seed": worker_seed(rc.seed, trainer.global_steps, 1000 + index),
            },
        )
        out = trainer.actor_rollout_wg.val_loss_em(data)
        losses.append(float(out.batch["val_loss"].float().mean()))
        counted = int(out.batch["em_counted"].sum())
        ems.append(int(out.batch["em_matches"].sum()) / max(counted, 1))
    return {"val_loss": float(np.mean(losses)), "val_em_score": float(np.mean(ems))}
