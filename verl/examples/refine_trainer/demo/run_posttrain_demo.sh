#!/usr/bin/env bash
# ReFINE post-training, nested: per global step the inner loop (NTP + NSP-GRPO with the hybrid reward)
# on the RULER QA prompts, then the outer loop = one task-SFT step on the first gold answer. Same weights, optimiser
# and scheduler for both. Validation every 24 steps: greedy answers of up to 32 tokens scored by the
# RULER scorer (chosen by data_source) -> val_reward. Official hyper-parameters; official override names.
#
#   MODEL_PATH=/ckpt/midtrained_lact TRAIN_FILES=/data/ruler_squadqa_lact_8192_1600_train.parquet \
#   VAL_FILES=data/ruler/ruler_squadqa_lact_8192_200_test.parquet \
#   bash verl/examples/refine_trainer/demo/run_posttrain_demo.sh [overrides]
#   SMOKE=1 bash verl/examples/refine_trainer/demo/run_posttrain_demo.sh   # CPU, tiny model, 2 steps (CI)
#   SMOKE=1 MODEL_PATH=/ckpt/my_export bash ...   # the same CPU smoke run on your model (refine.export output)
#
# Train file: the official ruler_*_1600_train.parquet if you have it, or one built from text shipped in the repo by
# scripts/make_ruler_qa_train.py (same columns; see docs/phases.md). Extra arguments are Hydra overrides.
set -euo pipefail

######### Change here (or set in the environment) #########
MODEL_PATH=${MODEL_PATH:-"<path-to-model-dir>"}          # usually the mid-trained checkpoint, merged to HF format
TRAIN_FILES=${TRAIN_FILES:-"<path-to-ruler-train-parquet>"}
VAL_FILES=${VAL_FILES:-data/ruler/ruler_squadqa_lact_8192_200_test.parquet}
PROMPT_KEY=${PROMPT_KEY:-prompt}
ANSWER_KEY=${ANSWER_KEY:-answer}                         # RULER: list of gold answers; the first is the SFT target
DATA_SOURCE_KEY=${DATA_SOURCE_KEY:-task}                 # picks the scorer (ruler_squadqa / ruler_hotpotqa)
REWARD_FN=${REWARD_FN:-refine/scoring/reward.py}         # compute_score dispatching on data_source (RULER here)
NGPUS_PER_NODE=${NGPUS_PER_NODE:-8}
NNODES=${NNODES:-1}
TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-64}
VAL_BATCH_SIZE=${VAL_BATCH_SIZE:-16}
PROJECT_NAME=${PROJECT_NAME:-ReFINE}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-posttrain_8k_tttrl}
# one folder per project and experiment: a new experiment never resumes another one's checkpoint
CKPT_DIR=${CKPT_DIR:-checkpoints/$PROJECT_NAME/$EXPERIMENT_NAME}
LOGGER=${LOGGER:-console}
SMOKE=${SMOKE:-0}
############################################################
# Batch sizes (the official script leaves them unset and cannot finish):
# - TRAIN_BATCH_SIZE=64: the default 1024 gives 1 step per epoch on 1600 rows (drop_last); save/test every 24 steps
#   points at ~25 steps per epoch, i.e. 1600 / 64 = 25. 64 / 8 GPUs = 8 prompts per GPU, divisible by the
#   micro-batches (2) and >= the TTT mini-batch of 16 sequences (-> 4 inner optimiser steps + 1 SFT step per step).
# - VAL_BATCH_SIZE=16: the default (all 200 rows = 25 per GPU) breaks the micro-batch-2 generation chunking.
#   16 = 2 rows per GPU; 12 full batches score 192 of 200 rows (the validation loader drops the last partial
#   batch, as officially). VAL_BATCH_SIZE=8 with actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1
#   scores all 200.
# - DATA_SOURCE_KEY=task: officially unset, so the reward manager failed on the missing data_source.

DEMO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
source "$DEMO_DIR/caller_paths.sh"   # relative paths are taken from where the script is run
REPO_ROOT="$(cd "$DEMO_DIR/../../../.." && pwd)"
cd "$REPO_ROOT"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

SMOKE_ARGS=()
if [[ "$SMOKE" == 1 ]]; then
    source "$DEMO_DIR/smoke.sh"
    TRAIN_FILES=data/ruler_train/ruler_synthqa_tiny_512_64_train.parquet
    VAL_FILES=$SMOKE_DIR/ruler_val.parquet          # 4 official RULER test rows, shortened
    SMOKE_ARGS=(
        "${SMOKE_COMMON_ARGS[@]}"
        data.max_prompt_length="$SMOKE_MAX_PROMPT_LENGTH"
        data.train_batch_size=2
        data.val_batch_size=2
        actor_rollout_ref.actor.ttt_n_chunks=2
        actor_rollout_ref.actor.ttt_ppo_mini_batch_size=2
        actor_rollout_ref.actor.ppo_mini_batch_size=2
        trainer.total_training_steps=2
        trainer.test_freq=2
    )
fi

for name in MODEL_PATH TRAIN_FILES VAL_FILES; do
    if [[ "${!name}" == *"<"* ]]; then
        echo "run_posttrain_demo.sh: set $name (now ${!name}); or run with SMOKE=1 for the CPU smoke run" >&2
        exit 2
    fi
done

# Official values (post-training), plus the batch sizes and data_source above.
OFFICIAL_ARGS=(
    algorithm.adv_estimator=grpo
    custom_reward_function.path="$(realpath "$REWARD_FN")"
    +algorithm.task_sft_update=True
    +algorithm.task_ppo_update=False
    +algorithm.ttt_sft_update=True
    +algorithm.ttt_ppo_update=True
    data.train_files="$TRAIN_FILES"
    data.val_files="$VAL_FILES"
    data.prompt_key="$PROMPT_KEY"
    +data.answer_key="$ANSWER_KEY"
    +data.data_source_key="$DATA_SOURCE_KEY"
    data.train_batch_size="$TRAIN_BATCH_SIZE"
    data.val_batch_size="$VAL_BATCH_SIZE"
    data.max_prompt_length=8160
    data.max_response_length=32
    actor_rollout_ref.model.path="$MODEL_PATH"
    +actor_rollout_ref.actor.ttt_n_chunks=8
    +actor_rollout_ref.actor.ttt_n=1
    +actor_rollout_ref.actor.ttt_reward=hybrid
    +actor_rollout_ref.actor.ttt_sft_loss_coef=1.0
    +actor_rollout_ref.actor.ttt_ppo_loss_coef=0.2
    +actor_rollout_ref.actor.ttt_ppo_mini_batch_size=16
    +actor_rollout_ref.actor.ttt_ppo_micro_batch_size_per_gpu=2
    actor_rollout_ref.actor.ppo_mini_batch_size=16
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2
    +actor_rollout_ref.rollout.ttt_log_prob_micro_batch_size_per_gpu=2
    +actor_rollout_ref.rollout.ttt_temperature=1.0
    +actor_rollout_ref.rollout.ttt_response_length=5
    actor_rollout_ref.rollout.name=hf
    actor_rollout_ref.rollout.n=1
    trainer.default_local_dir="$CKPT_DIR"
    trainer.val_before_train=False
    trainer.val_only=False
    trainer.n_gpus_per_node="$NGPUS_PER_NODE"
    trainer.nnodes="$NNODES"
    trainer.save_freq=24
    trainer.test_freq=24
    trainer.logger="$LOGGER"
    trainer.project_name="$PROJECT_NAME"
    trainer.experiment_name="$EXPERIMENT_NAME"
    trainer.total_epochs=1
)

set -x
# exec: the trainer takes this script's process, so a signal sent to it (preemption) reaches the trainer
exec "$PYTHON" -m refine.main "${OFFICIAL_ARGS[@]}" "${SMOKE_ARGS[@]}" "$@"
