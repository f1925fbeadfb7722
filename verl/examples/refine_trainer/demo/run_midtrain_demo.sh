#!/usr/bin/env bash
# ReFINE mid-training: on each batch of long documents, the inner loop = NTP on the whole document +
# NSP-GRPO on entropy-selected 5-token continuations with a cosine-similarity reward. Validation: val_loss and
# val_em_score (val_get_loss). Official hyper-parameters; official override names, mapped onto refine.*.
#
#   MODEL_PATH=/models/lact-760m TRAIN_FILES=/data/slimpajama_16k_train.parquet \
#   VAL_FILES=/data/slimpajama_val.parquet bash verl/examples/refine_trainer/demo/run_midtrain_demo.sh [overrides]
#   SMOKE=1 bash verl/examples/refine_trainer/demo/run_midtrain_demo.sh   # CPU, tiny model, 2 steps (CI)
#   SMOKE=1 MODEL_PATH=/ckpt/my_export bash ...   # the same CPU smoke run on your model (refine.export output)
#
# Data: parquet files with a raw-text column (PROMPT_KEY); officially SlimPajama-6B documents of >= 16K tokens
# (scripts/prepare_midtrain_data.py). Extra arguments are Hydra overrides appended last.
set -euo pipefail

######### Change here (or set in the environment) #########
MODEL_PATH=${MODEL_PATH:-"<path-to-model-dir>"}          # local HF folder (LaCT or fla DeltaNet)
TRAIN_FILES=${TRAIN_FILES:-"<path-to-train-parquet>"}    # documents of >= 16K tokens
VAL_FILES=${VAL_FILES:-"<path-to-val-parquet>"}
PROMPT_KEY=${PROMPT_KEY:-text}                           # the raw-text column
NGPUS_PER_NODE=${NGPUS_PER_NODE:-8}
NNODES=${NNODES:-1}
PROJECT_NAME=${PROJECT_NAME:-ReFINE}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-midtrain_16k_tttrl}
# one folder per project and experiment: a new experiment never resumes another one's checkpoint
CKPT_DIR=${CKPT_DIR:-checkpoints/$PROJECT_NAME/$EXPERIMENT_NAME}
LOGGER=${LOGGER:-console}                                # e.g. '["console","wandb"]'
SMOKE=${SMOKE:-0}
############################################################

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
    TRAIN_FILES=data/demo/midtrain_train.parquet
    VAL_FILES=$SMOKE_DIR/midtrain_val.parquet
    SMOKE_ARGS=(
        "${SMOKE_COMMON_ARGS[@]}"
        data.max_prompt_length=256
        data.train_batch_size=2
        data.val_batch_size=2
        actor_rollout_ref.actor.ttt_n_chunks=2
        actor_rollout_ref.actor.ttt_ppo_mini_batch_size=2
        trainer.total_training_steps=2
        trainer.test_freq=2
    )
fi

for name in MODEL_PATH TRAIN_FILES VAL_FILES; do
    if [[ "${!name}" == *"<"* ]]; then
        echo "run_midtrain_demo.sh: set $name (now ${!name}); or run with SMOKE=1 for the CPU smoke run" >&2
        exit 2
    fi
done

# Official values (mid-training). Batch 128 documents on 8 GPUs = 16 per GPU; ttt mini-batch 32 sequences
# = 4 optimiser steps per global step.
OFFICIAL_ARGS=(
    algorithm.adv_estimator=grpo
    +algorithm.ttt_sft_update=True
    +algorithm.ttt_ppo_update=True
    +algorithm.ttt_sampling=entropy
    +algorithm.val_get_loss=True
    data.train_files="$TRAIN_FILES"
    data.val_files="$VAL_FILES"
    data.prompt_key="$PROMPT_KEY"
    data.train_batch_size=128
    data.val_batch_size=32
    data.max_prompt_length=16384
    actor_rollout_ref.model.path="$MODEL_PATH"
    +actor_rollout_ref.actor.ttt_n_chunks=8
    +actor_rollout_ref.actor.ttt_n=1
    +actor_rollout_ref.actor.ttt_reward=cosine_similarity
    +actor_rollout_ref.actor.ttt_sft_loss_coef=1.0
    +actor_rollout_ref.actor.ttt_ppo_loss_coef=0.2
    +actor_rollout_ref.actor.ttt_ppo_mini_batch_size=32
    +actor_rollout_ref.actor.ttt_ppo_micro_batch_size_per_gpu=2
    +actor_rollout_ref.rollout.ttt_log_prob_micro_batch_size_per_gpu=2
    +actor_rollout_ref.rollout.ttt_temperature=1.0
    +actor_rollout_ref.rollout.ttt_response_length=5
    actor_rollout_ref.rollout.name=hf
    trainer.default_local_dir="$CKPT_DIR"
    trainer.val_before_train=True
    trainer.n_gpus_per_node="$NGPUS_PER_NODE"
    trainer.nnodes="$NNODES"
    trainer.save_freq=20
    trainer.test_freq=10
    trainer.logger="$LOGGER"
    trainer.project_name="$PROJECT_NAME"
    trainer.experiment_name="$EXPERIMENT_NAME"
    trainer.total_epochs=1
)

set -x
# exec: the trainer takes this script's process, so a signal sent to it (preemption) reaches the trainer
exec "$PYTHON" -m refine.main "${OFFICIAL_ARGS[@]}" "${SMOKE_ARGS[@]}" "$@"
