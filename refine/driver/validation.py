"""Validation by phase (spec 1.1-1.3): mid-training loss/EM (`val_get_loss`), else greedy generation scored by
data source, optionally after a test-time-training inner loop on each validation batch (`val_ttt_*`)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch
from omegaconf import OmegaConf
from tqdm import tqdm
from verl import DataProto

from refine.driver.predictions import PredictionWriter, prediction_paths
from refine.driver.preemption import PREEMPTED_EXIT_STATUS, Preempted, stop_reason
from refine.scoring import split_answers
from refine.scoring.task_scorer import task_scorer
from refine.settings import ValidationSettings, attach, replace
from refine.verbosity import verbose
from refine.worker.rpc import worker_seed


def validate(trainer) -> dict[str, float]:
    """The validation metrics of `trainer` for its phase flags."""
    rc = trainer.rc
    if rc.val_get_loss:
        return validate_loss(trainer)
    return validate_generation(trainer)


def validate_loss(trainer) -> dict[str, float]:
    """Mid-training validation (val_get_loss): `val_loss` and `val_em_score`, each averaged over validation batches.

    Per batch: val_loss = mean over rows of each rank's micro-batch-mean NTP loss (the model's own loss); val_em_score
    = matches of tokens sampled at temperature 1 over counted positions (mask = 1, last column excluded). No weights
    change; the sampling draws are seeded from refine.seed and the step, apart from the training RNG.
    """
    rc = trainer.rc
    settings = ValidationSettings.of(rc, trainer.config)
    losses, ems = [], []
    for index, batch_dict in enumerate(trainer.val_dataloader):
        batch = DataProto.from_single_dict(batch_dict)
        data = DataProto.from_dict(
            tensors={"input_ids": batch.batch["input_ids"], "attention_mask": batch.batch["attention_mask"]},
            meta_info=attach(replace(settings, seed=worker_seed(rc.seed, trainer.global_steps, 1000 + index))),
        )
        out = trainer.actor_rollout_wg.val_loss_em(data)
        losses.append(float(out.batch["val_loss"].float().mean()))
        counted = int(out.batch["em_counted"].sum())
        ems.append(int(out.batch["em_matches"].sum()) / max(counted, 1))
    return {"val_loss": float(np.mean(losses)), "val_em_score": float(np.mean(ems))}


def validate_generation(trainer) -> dict[str, float]:
    """Greedy generation scored with `refine.scoring` (spec 1.2, 1.3, 2.D), with TTT when `val_ttt_*` is on.

    TTT (Q1): per validation batch, the inner loop on its prompts (metrics discarded, as officially), then greedy
    answers with the updated weights. `refine.ttt_reset=cumulative` (official) keeps adapting over the file in
    loader order; `batch` restores weights, optimiser and scheduler after every batch.
    Logs `val_reward` (official: mean over scored rows of full batches), `val_reward/<data_source>` means and
    `val_n_scored`.
    """
    score_response = task_scorer(trainer.config)
    rc = trainer.rc
    wg = trainer.actor_rollout_wg
    ttt = rc.val_ttt_sft_update or rc.val_ttt_ppo_update
    reset = ttt and rc.ttt_reset == "batch"
    settings = ValidationSettings.of(rc, trainer.config)
    limits = row_max_gen_tokens(trainer) if rc.use_row_max_gen_tokens else None
    batch_size = trainer.val_dataloader.batch_size
    scores: list[float] = []
    by_source: dict[str, list[float]] = {}
    trainer_cfg = trainer.config.trainer
    writer = PredictionWriter(
        prediction_paths(trainer.run_dir, trainer.global_steps, trainer_cfg.get("validation_data_dir")),
        step=trainer.global_steps, show=int(trainer_cfg.get("log_val_generations") or 0))
    if reset:
        wg.snapshot_state()
    # the console's step lines show the result; the bar only with REFINE_VERBOSE=1
    batches = tqdm(trainer.val_dataloader, desc="test-time training + answers" if ttt else "validation answers",
                   unit="batch", leave=False, disable=not verbose())
    for index, batch_dict in enumerate(batches):
        batch = DataProto.from_single_dict(batch_dict)
        if ttt:
            batch.non_tensor_batch["uid"] = np.array([f"val{index}-{i}" for i in range(len(batch))], dtype=object)
            trainer.inner_loop(batch, validation=True)
        row_limits = None if limits is None else limits[index * batch_size : (index + 1) * batch_size]
        data = DataProto.from_dict(
            tensors={"input_ids": batch.batch["input_ids"], "attention_mask": batch.batch["attention_mask"]},
            meta_info=attach(replace(settings, max_new_tokens=max(row_limits)) if row_limits else settings),
        )
        responses = wg.generate_greedy(data).batch["responses"]
        if row_limits:  # greedy: a row's first n tokens do not depend on decoding further, so cut per row
            responses = torch.stack([
                torch.where(torch.arange(responses.shape[1]) < limit, row, trainer.pad_token_id)
                for row, limit in zip(responses, row_limits)
            ])
        texts = trainer.tokenizer.batch_decode(responses, skip_special_tokens=True)
        prompts = trainer.tokenizer.batch_decode(batch.batch["input_ids"], skip_special_tokens=True)
        for text, prompt, answers, source in zip(texts, prompts, batch.non_tensor_batch["answers"],
                                                 batch.non_tensor_batch["data_source"]):
            gold = split_answers(answers)
            score = float(score_response(str(source), text, gold))
            scores.append(score)
            by_source.setdefault(str(source), []).append(score)
            writer.write(data_source=str(source), prompt=prompt, prediction=text, answers=gold, score=score)
        batches.set_postfix(val_reward=f"{np.mean(scores):.3f}")
        if reset:
            wg.restore_state()
        stop = stop_reason(trainer.run_dir) if trainer_cfg.get("val_only", False) else None
        if stop and index + 1 < len(trainer.val_dataloader):  # test-time training: nothing to save, stop here
            writer.close()
            raise Preempted(ttt_stopped_message(stop, index + 1, len(trainer.val_dataloader), writer.paths))
    writer.close()
    print(f"predictions: {', '.join(str(p) for p in writer.paths)}", flush=True)
    metrics = {"val_reward": float(np.mean(scores)), "val_n_scored": float(len(scores))}
    metrics.update({f"val_reward/{source}": float(np.mean(values)) for source, values in sorted(by_source.items())})
    return metrics


def row_max_gen_tokens(trainer) -> list[int]:
    """Each validation row's `max_gen_tokens` (LongBench files), in loader order (`refine.use_row_max_gen_tokens`,
    Q12; off by default: the official code uses data.max_response_length for every row)."""
    files = trainer.config.data.val_files
    files = [files] if isinstance(files, str) else OmegaConf.to_container(files)
    values = [int(v) for path in files for v in pq.read_table(path, columns=["max_gen_tokens"]).column(0).to_pylist()]
    return [values[row] for row in trainer.val_dataset.rows]


def ttt_stopped_message(reason: str, done: int, total: int, paths) -> str:
    return (f"test-time training stopped on {reason} (preemption or time limit) after {done} of {total} validation "
            f"batches: nothing is saved (it keeps no checkpoint); the predictions so far are in "
            f"{', '.join(str(p) for p in paths)}. Run the same command again to redo it; exit status "
            f"{PREEMPTED_EXIT_STATUS}")
