#!/usr/bin/env bash
# ReFINE test-time training: validation only. For each validation batch of 8 test prompts: the inner
# loop (NTP + NSP-GRPO with the binary reward) on the prompts, then greedy answers (up to 32 tokens) with the updated
# weights, scored by the LongBench scorer of the row's task (data_source) -> val_reward (0..1, mean over scored rows).
# Adaptation is cumulative over the file, as officially; add refine.ttt_reset=batch to restore the
# weights and optimiser state before every batch. Official hyper-parameters; official override names.
#
#   MODEL_PATH=/ckpt/refine_lact VAL_FILES=data/longbench/hotpotqa_16384.parquet \
#   bash verl/examples/refine_trainer/demo/run_testtimetrain_demo.sh [overrides]
#   SMOKE=1 bash verl/examples/refine_trainer/demo/run_testtimetrain_demo.sh   # CPU, tiny model, 2 batches (CI)
#   SMOKE=1 MODEL_PATH=/ckpt/my_export bash ...   # the same CPU smoke run on your model (refine.export output)
#
# One LongBench task per run (cumulative TTT runs over that file in order; drop_last counts per file);
# scripts/slurm/testtimetrain.sbatch loops over the 14 tasks. Extra arguments are Hydra overrides.
set -euo pipefail

######### Change here (or set in the environment) #########
MODEL_PATH=${MODEL_PATH:-"<path-to-model-dir>"}
VAL_FILES=${VAL_FILES:-data/longbench/hotpotqa_16384.parquet}
TRAIN_FILES=${TRAIN_FILES:-}                             # not needed (val_only; the official script wanted a dummy)
PROMPT_KEY=${PROMPT_KEY:-prompt}
ANSWER_KEY=${ANSWER_KEY:-answers}                        # LongBench: list of gold answers
DATA_SOURCE_KEY=${DATA_SOURCE_KEY:-task}                 # the LongBench dataset name picks the metric
REWARD_FN=${REWARD_FN:-refine/scoring/reward.py}         # compute_score dispatching on data_source (LongBench here)
NGPUS_PER_NODE=${NGPUS_PER_NODE:-4}
NNODES=${NNODES:-1}
MAX_SEQ_LENGTH=${MAX_SEQ_LENGTH:-16384}
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-32}
PROJECT_NAME=${PROJECT_NAME:-ReFINE}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-testtimetrain_16k_tttrl}
# one folder per project and experiment: a new experiment never resumes another one's checkpoint
CKPT_DIR=${CKPT_DIR:-checkpoints/$PROJECT_NAME/$EXPERIMENT_NAME}
LOGGER=${LOGGER:-console}
SMOKE=${SMOKE:-0}
############################################################
MAX_PROMPT_LENGTH=$((MAX_SEQ_LENGTH - MAX_RESPONSE_LENGTH))
# Batch sizes: officially actor.ppo_mini_batch_size=4 on 4 GPUs is normalised to 1 per GPU and fails
# verl's "divisible by ppo_micro_batch_size_per_gpu (2)" check at worker start, although task PPO is off. It is set
# to 8 (= 2 per GPU) here; it is never used. val_batch_size 8 = 2 prompts per GPU = 16 NSP rollouts per GPU, and
# >= the TTT mini-batch of 4 sequences (-> 2 inner optimiser steps per validation batch).

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
    VAL_FILES=$SMOKE_DIR/longbench_val.parquet      # 2 hotpotqa + 2 trec rows of the shipped files, shortened
    SMOKE_ARGS=(
        "${SMOKE_COMMON_ARGS[@]}"
        data.max_prompt_length="$SMOKE_MAX_PROMPT_LENGTH"
        data.train_batch_size=2
        data.val_batch_size=2
        actor_rollout_ref.actor.ttt_n_chunks=2
        actor_rollout_ref.actor.ttt_ppo_mini_batch_size=2
        actor_rollout_ref.actor.ppo_mini_batch_size=2
    )
fi

for name in MODEL_PATH VAL_FILES; do
    if [[ "${!name}" == *"<"* ]]; then
        echo "run_testtimetrain_demo.sh: set $name (now ${!name}); or run with SMOKE=1 for the CPU smoke run" >&2
        exit 2
    fi
done

TRAIN_ARGS=()
if [[ -n "$TRAIN_FILES" ]]; then
    TRAIN_ARGS=(data.train_files="$TRAIN_FILES")
fi

# Official values (test-time training), with ppo_mini_batch_size fixed as above.
OFFICIAL_ARGS=(
    "${TRAIN_ARGS[@]}"
    algorithm.adv_estimator=grpo
    custom_reward_function.path="$(realpath "$REWARD_FN")"
    +algorithm.val_ttt_ppo_update=True
    +algorithm.val_ttt_sft_update=True
    data.val_files="$VAL_FILES"
    data.prompt_key="$PROMPT_KEY"
    +data.answer_key="$ANSWER_KEY"
    +data.data_source_key="$DATA_SOURCE_KEY"
    data.train_batch_size=8
    data.val_batch_size=8
    data.max_prompt_length="$MAX_PROMPT_LENGTH"
    data.max_response_length="$MAX_RESPONSE_LENGTH"
    actor_rollout_ref.model.path="$MODEL_PATH"
    +actor_rollout_ref.actor.ttt_n_chunks=8
    +actor_rollout_ref.actor.ttt_n=1
    +actor_rollout_ref.actor.ttt_reward=binary
    +actor_rollout_ref.actor.ttt_sft_loss_coef=1.0
    +actor_rollout_ref.actor.ttt_ppo_loss_coef=0.4
    +actor_rollout_ref.actor.ttt_ppo_mini_batch_size=4
    +actor_rollout_ref.actor.ttt_ppo_micro_batch_size_per_gpu=2
    actor_rollout_ref.actor.ppo_mini_batch_size=8
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2
    +actor_rollout_ref.rollout.ttt_log_prob_micro_batch_size_per_gpu=2
    +actor_rollout_ref.rollout.ttt_temperature=1.0
    +actor_rollout_ref.rollout.ttt_response_length=5
    actor_rollout_ref.rollout.name=hf
    trainer.default_local_dir="$CKPT_DIR"
    trainer.val_before_train=True
    trainer.val_only=True
    trainer.n_gpus_per_node="$NGPUS_PER_NODE"
    trainer.nnodes="$NNODES"
    trainer.save_freq=-1
    trainer.test_freq=-1
    trainer.logger="$LOGGER"
    trainer.project_name="$PROJECT_NAME"
    trainer.experiment_name="$EXPERIMENT_NAME"
    trainer.total_epochs=1
)

set -x
# exec: the trainer takes this script's process, so a signal sent to it (preemption) reaches the trainer
exec "$PYTHON" -m refine.main "${OFFICIAL_ARGS[@]}" "${SMOKE_ARGS[@]}" "$@"
