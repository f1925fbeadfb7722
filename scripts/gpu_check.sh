#!/usr/bin/env bash
# The checks that need an NVIDIA GPU (CI has none), in one command for a maintainer on a GPU machine:
#   1. the GPU-only tests (fla's Triton kernels vs the CPU kernels, LaCT's GPU attention vs CPU), none may skip;
#   2. one mid-training step of a real-sized fla DeltaNet-1.3B (random init, built from its config by
#      scripts/gpu_check.py) on documents of 16K tokens, micro-batch 2, with `+preset=gpu_midtrain` (bf16 mixed
#      precision, fp32 master weights, activation checkpointing, FSDP over every visible GPU), once per NSP mode
#      (refine.nsp_mode=faithful and fast); then per mode the memory estimate printed at start, the measured peak
#      GPU memory and the document tokens per second.
#
#   bash scripts/gpu_check.sh [--dry-run] [--out DIR]
#     --dry-run (or --print): print the commands it would run, run nothing (works without a GPU)
#     --out DIR: model, documents, logs and run folders (default runs/gpu_check; the model is reused on reruns)
#     GPUS=N: use N GPUs (default: every GPU torch sees); PYTHON=...: the interpreter (default .venv/bin/python)
#
# Without a usable CUDA GPU it refuses with one line (exit 2). Exit 1 when a test fails or skips or a step fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=runs/gpu_check
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run|--print) DRY=1 ;;
        --out) OUT=${2:?--out needs a folder}; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
    esac
    shift
done

# Every test that skips without CUDA (tests/trainer/test_gpu_check.py keeps this list complete).
GPU_TESTS=(tests/models/test_gpu_parity.py "tests/lact/test_forward.py::test_gpu_backend_matches_cpu")
SEQ_LEN=16384
MICRO=2
MODES=(faithful fast)

if [ "$DRY" = 0 ]; then
    why=$("$PY" -c 'import torch
if torch.version.cuda is None: print(f"torch {torch.__version__} is a CPU-only build")
elif not torch.cuda.is_available(): print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")' 2>&1) \
        || why="$PY cannot import torch"
    if [ -n "$why" ]; then
        echo "gpu_check.sh: needs an NVIDIA GPU, but $why; run it on a GPU machine (or --dry-run to see the commands)" >&2
        exit 2
    fi
    GPUS=${GPUS:-$("$PY" -c 'import torch; print(torch.cuda.device_count())')}
else
    GPUS=${GPUS:-1}
fi
BATCH=$((MICRO * GPUS))  # one micro-batch of documents per GPU: one step, one optimiser step

show() { printf '%q ' "$@" | sed 's/ $//'; echo; }
failed=0

# 1. GPU-only tests
TEST_CMD=(env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$PY" -m pytest "${GPU_TESTS[@]}" -q -rs -p no:cacheprovider)
BUILD_CMD=("$PY" scripts/gpu_check.py build --out "$OUT" --docs "$BATCH" --seq-len "$SEQ_LEN")
step_cmd() {  # the refine.main command of one NSP mode
    STEP_CMD=(env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$PY" -m refine.main +preset=gpu_midtrain
        "actor_rollout_ref.model.path=$OUT/model" "data.train_files=$OUT/docs.parquet"
        "data.val_files=$OUT/docs.parquet" "data.max_prompt_length=$SEQ_LEN" "data.train_batch_size=$BATCH"
        "data.val_batch_size=$BATCH" "refine.mini_batch_size=$BATCH" "refine.micro_batch_size_per_gpu=$MICRO"
        "refine.log_prob_micro_batch_size_per_gpu=$MICRO" "refine.nsp_mode=$1" "trainer.n_gpus_per_node=$GPUS"
        trainer.total_training_steps=1 trainer.val_before_train=false trainer.test_freq=-1 trainer.save_freq=-1
        trainer.resume_mode=disable "trainer.default_local_dir=$OUT/runs/$1" "trainer.experiment_name=gpu_check_$1")
}
SUMMARY_CMD=("$PY" scripts/gpu_check.py summary --out "$OUT" --tokens $((BATCH * SEQ_LEN)) "${MODES[@]}")

if [ "$DRY" = 1 ]; then
    show "${TEST_CMD[@]}"
    show "${BUILD_CMD[@]}"
    for mode in "${MODES[@]}"; do step_cmd "$mode"; show "${STEP_CMD[@]}"; done
    show "${SUMMARY_CMD[@]}"
    exit 0
fi

mkdir -p "$OUT"
echo "== GPU-only tests" >&2
"${TEST_CMD[@]}" 2>&1 | tee "$OUT/tests.log"
if [ "${PIPESTATUS[0]}" != 0 ] || tail -n 1 "$OUT/tests.log" | grep -q skipped; then
    echo "gpu_check.sh: GPU-only tests failed or skipped (see $OUT/tests.log)" >&2
    failed=1
fi

echo "== DeltaNet-1.3B model and $BATCH documents of $SEQ_LEN tokens in $OUT" >&2
"${BUILD_CMD[@]}" || { echo "gpu_check.sh: building the model or the documents failed" >&2; exit 1; }
for mode in "${MODES[@]}"; do
    echo "== one mid-training step, refine.nsp_mode=$mode, $GPUS GPU(s), micro-batch $MICRO" >&2
    rm -rf "$OUT/runs/$mode"
    step_cmd "$mode"
    "${STEP_CMD[@]}" 2>&1 | tee "$OUT/$mode.log"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "gpu_check.sh: the $mode step failed (see $OUT/$mode.log)" >&2; failed=1; }
done

echo "== summary ($GPUS GPU(s), S=$SEQ_LEN, micro-batch $MICRO)"
"${SUMMARY_CMD[@]}" || failed=1
exit "$failed"
