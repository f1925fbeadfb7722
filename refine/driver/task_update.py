"""The outer loop of post-training (spec 2.B): task SFT on the first gold answer, one optimiser step per global
step (Q23), or task GRPO with the task reward (`task_ppo_update`, off in every official demo)."""

from __future__ import annotations

import torch
from verl import DataProto
from verl.trainer.ppo.metric_utils import compute_data_metrics
from verl.utils.profiler import simple_timer

from refine.driver.nsp_step import rank0_metrics
from refine.nsp.advantages import grpo_advantages
from refine.scoring import split_answers
from refine.scoring.task_scorer import task_scorer
from refine.settings import TaskSettings, attach, replace


def task_update(trainer, batch: DataProto) -> dict[str, float]:
    """Run the configured outer update on `batch`; returns its metrics (official names, no `_ttt` suffix)."""
    if trainer.rc.task_ppo_update:
        return task_grpo_update(trainer, batch)
    data = DataProto.from_dict(
        tensors={key: batch.batch[key] for key in
                 ("input_ids", "attention_mask", "ground_truth_ids", "ground_truth_attention_mask")},
        meta_info=attach(TaskSettings.of(trainer.config)),
    )
    timing: dict[str, float] = {}
    with simple_timer("update_actor_task", timing):
        out = trainer.actor_rollout_wg.task_sft_update(data)
    return rank0_metrics(out) | {f"timing_s/{key}": value for key, value in timing.items()}


def task_rewards(trainer, responses, batch: DataProto) -> torch.Tensor:
    """Per-row task score (decoded with special tokens skipped, answers split on "|", scorer by data source)."""
    score_response = task_scorer(trainer.config)
    texts = trainer.tokenizer.batch_decode(responses, skip_special_tokens=True)
    return torch.tensor([
        float(score_response(str(source), text, split_answers(answers)))
        for text, answers, source in zip(texts, batch.non_tensor_batch["answers"], batch.non_tensor_batch["data_source"])
    ])


def task_grpo_update(trainer, batch: DataProto) -> dict[str, float]:
    """Task GRPO (spec 2.B): rollout.n sampled answers per prompt (EOS stops), task reward at the last column,
    old log-probs, GRPO over the prompt's group, upstream PPO update; data metrics without the `_ttt` suffix."""
    settings = TaskSettings.of(trainer.config)
    n = settings.rollout_n
    wg = trainer.actor_rollout_wg
    timing: dict[str, float] = {}
    repeated = batch.repeat(repeat_times=n, interleave=True)
    prompts, prompt_mask = repeated.batch["input_ids"], repeated.batch["attention_mask"]
    gen_in = DataProto.from_dict(tensors={"input_ids": prompts, "attention_mask": prompt_mask},
                                 meta_info=attach(replace(settings, seed=trainer.next_step_seed())))
    with simple_timer("gen_task", timing):
        gen = wg.task_generate(gen_in)
    responses, response_mask = gen.batch["responses"], gen.batch["response_mask"]
    scores = task_rewards(trainer, responses, repeated)
    token_rewards = torch.zeros(responses.shape, dtype=torch.float32)
    token_rewards[:, -1] = scores  # the official reward manager writes the score at the last column
    lp_in = DataProto.from_dict(
        tensors={"input_ids": prompts, "attention_mask": prompt_mask, "responses": responses,
                 "response_mask": response_mask},
        meta_info=attach(settings),
    )
    with simple_timer("old_log_prob_task", timing):
        old_log_probs = wg.task_old_log_prob(lp_in).batch["old_log_probs"]
    advantages, returns = grpo_advantages(token_rewards, response_mask.float(), repeated.non_tensor_batch["uid"])
    update_in = DataProto.from_dict(
        tensors={"input_ids": prompts, "attention_mask": prompt_mask, "responses": responses,
                 "response_mask": response_mask, "old_log_probs": old_log_probs, "advantages": advantages},
        meta_info=attach(settings),
    )
    with simple_timer("update_actor_task", timing):
        out = wg.task_ppo_update(update_in)
    data = DataProto.from_dict(tensors={
        "prompts": prompts, "responses": responses, "response_mask": response_mask,
        "attention_mask": torch.cat([prompt_mask, response_mask], dim=1), "token_level_scores": token_rewards,
        "token_level_rewards": token_rewards, "advantages": advantages, "returns": returns,
    })
    metrics = rank0_metrics(out) | compute_data_metrics(data, use_critic=False)
    return metrics | {f"timing_s/{key}": value for key, value in timing.items()}
