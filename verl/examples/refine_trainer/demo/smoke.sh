# Sourced by run_{midtrain,posttrain,testtimetrain}_demo.sh when SMOKE=1 (never run on its own).
# The settings the three CPU smoke runs share: the model (MODEL_PATH when set, e.g. your own export from
# `python -m refine.export`; else the tiny demo model in data/demo/model), one CPU worker, fp32 (no bf16 mixed
# precision on CPU), and tiny validation files cut from the shipped parquets (smoke_data.py) to fit its tokenizer.
# Each script then overrides the official sizes with tiny ones (2 steps / 2 validation batches of 2 rows).

if [[ "$MODEL_PATH" == *"<"* ]]; then   # still the placeholder: no model given
    MODEL_PATH=data/demo/model
fi
SMOKE_DIR=${SMOKE_DIR:-$(mktemp -d -t refine_smoke.XXXXXX)}
SMOKE_MAX_PROMPT_LENGTH=480   # data/ruler_train prompts are <= 480 tokens of the tiny tokenizer
if [[ ! -f "$SMOKE_DIR/longbench_val.parquet" ]]; then   # a given SMOKE_DIR may hold them already
    "$PYTHON" "$DEMO_DIR/smoke_data.py" --out "$SMOKE_DIR" --max-prompt-length "$SMOKE_MAX_PROMPT_LENGTH" --rows 4 \
        --tokenizer "$MODEL_PATH"
fi

NGPUS_PER_NODE=1
NNODES=1
# The run folder is CKPT_DIR, as in a real run (checkpoints/<project>/<experiment> by default): metrics.jsonl,
# metrics.png, resolved_config.yaml, and a checkpoint every step that `python -m refine.export` turns into the next
# phase's MODEL_PATH. Resumes work as in a real run; a finished smoke run is not written over (the run stops with
# one line: pick another EXPERIMENT_NAME or CKPT_DIR, or add trainer.resume_mode=disable to start over).

SMOKE_COMMON_ARGS=(
    trainer.device=cpu
    trainer.save_freq=1
    data.dataloader_num_workers=0   # rows of a few hundred tokens: no loader processes (2 CPU cores, not 8)
    actor_rollout_ref.model.enable_gradient_checkpointing=False
    actor_rollout_ref.actor.fsdp_config.dtype=float32
    ++actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32
    ++actor_rollout_ref.actor.fsdp_config.mixed_precision.reduce_dtype=fp32
    ++actor_rollout_ref.actor.fsdp_config.mixed_precision.buffer_dtype=fp32
    ray_kwargs.ray_init.num_cpus=4
)
