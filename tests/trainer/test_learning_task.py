"""Post-training's task GRPO climbs the task reward it is given (issue 22): a learning test of the outer update.

`task_update.task_grpo_update` (the driver side) and the worker RPCs it calls (`task_generate`, `task_old_log_prob`,
`task_ppo_update`) run unchanged in-process on the shipped demo DeltaNet (`tests/trainer/inprocess_worker.py`).
The task is one a 199K-parameter model can learn: 4 fixed prompts (the first 48 tokens of 4 demo documents), 8
sampled answers of at most 4 tokens each, scored by the RULER QA scorer against the gold answer "the" (1 when it
appears in the answer's first line, case-insensitive: a base rate of 0.16 on 64 samples of the untrained model).
lr 1e-3, one optimiser step per step, 15 steps. The reversed arm scores with the negated reward through
`reward.custom_reward_function` (GRPO then gives exactly the negated advantages), and the test reads the true score.

Thresholds, from the measured noise (25-step runs of both arms): the per-step mean score over 32 answers moves by a
step-to-step standard deviation of about 0.03-0.05 (binomial: sqrt(0.1 * 0.9 / 32) = 0.053 at the base rate);
`start` = mean of steps 0-2, `end` = mean of steps 10-14, so end - start has a noise of about
0.053 * sqrt(1/3 + 1/5) = 0.039 (sigma). Measured: learning 0.083 -> 0.94; reversed 0.073 -> 0.012.
- RISE_MIN = 0.3 (about 8 sigma; the measured rise is 0.86);
- FLAT_MAX = 0.04 (1 sigma): the reversed arm may not rise more than this.
"""

from __future__ import annotations

import statistics

import pytest

STEPS, START, END = 15, slice(0, 3), slice(10, 15)
RISE_MIN, FLAT_MAX = 0.3, 0.04
N_PROMPTS, PROMPT_LEN, N_ANSWERS, ANSWER_LEN, ANSWER = 4, 48, 8, 4, "the"


def signed_score(data_source, solution_str, ground_truth, extra_info=None, sign=1.0):
    """The task reward (refine's scorer for `data_source`) times `sign`: the reversed arm's reward."""
    from refine.scoring.reward import score_response

    return sign * score_response(data_source, solution_str, ground_truth)


def task_run(sign: float) -> list[float]:
    """The true task score (mean over the step's 32 answers) of each of STEPS task-GRPO steps."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl import DataProto

    from refine.preflight.compose import REPO_ROOT
    from refine.driver.task_update import task_grpo_update
    from tests.trainer.inprocess_worker import TaskTrainer, demo_documents, demo_model

    rows = N_PROMPTS * N_ANSWERS
    config = OmegaConf.create({
        "actor_rollout_ref": {
            "rollout": {"n": N_ANSWERS, "temperature": 1.0, "top_p": 1.0, "top_k": -1,
                        "log_prob_micro_batch_size_per_gpu": rows},
            "actor": {"ppo_mini_batch_size": N_PROMPTS, "ppo_micro_batch_size_per_gpu": rows, "ppo_epochs": 1},
        },
        "data": {"max_response_length": ANSWER_LEN},
        "trainer": {"n_gpus_per_node": 1, "nnodes": 1},  # the in-process trainer is one worker
        "reward": {"custom_reward_function": {"path": __file__, "name": "signed_score",
                                              "reward_kwargs": {"sign": sign}}},
    })
    ids, mask, _ = demo_documents(N_PROMPTS, PROMPT_LEN)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "data" / "demo" / "model")
    trainer = TaskTrainer(demo_model(), config, tokenizer, lr=1e-3)
    batch = DataProto.from_dict(tensors={"input_ids": ids, "attention_mask": mask}, non_tensors={
        "uid": np.array([f"prompt{i}" for i in range(N_PROMPTS)], dtype=object),
        "answers": np.array([ANSWER] * N_PROMPTS, dtype=object),
        "data_source": np.array(["ruler_squadqa"] * N_PROMPTS, dtype=object)})
    # critic/score/mean: the mean of the reward the update was given
    return [sign * task_grpo_update(trainer, batch)["critic/score/mean"] for _ in range(STEPS)]


def test_task_grpo_climbs_the_task_reward_and_the_reversed_gradient_does_not():
    learning, reversed_run = task_run(1.0), task_run(-1.0)
    start, end = statistics.mean(learning[START]), statistics.mean(learning[END])
    assert end - start >= RISE_MIN, f"task GRPO: score {start:.3f} -> {end:.3f} did not rise by {RISE_MIN}"
    r_start, r_end = statistics.mean(reversed_run[START]), statistics.mean(reversed_run[END])
    assert r_end - r_start <= FLAT_MAX, f"task GRPO reversed: score {r_start:.3f} -> {r_end:.3f} rose"
    assert learning[0] == pytest.approx(reversed_run[0])  # same weights and seeds: the same first rollouts
