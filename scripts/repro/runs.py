"""Stages 2-4: the trainer runs of the study, each one `python -m refine.main` (the project's own entry point) on
the embedded demo preset with overrides, in its own folder under work/runs/<phase>/<arm>_s<seed>.

A run is done when its folder holds `run.json` (written after the trainer exits 0): done runs are skipped, so an
interrupted study resumes. The last checkpoint is exported to an HF folder (`hf/`) by reading the FSDP shard
directly (world size 1: every DTensor is whole).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QA_TRAIN = REPO / "data" / "ruler_train" / "ruler_synthqa_tiny_512_64_train.parquet"
# held out: no run sees its answers (test-time training reads its prompts only)
QA_TEST = REPO / "data" / "ruler_train" / "ruler_synthqa_tiny_512_16_val.parquet"
QA_MAX_PROMPT = 480  # data/ruler_train prompts are <= 480 tokens of the tiny tokenizer

# the arms: what differs between them (everything else is shared, see `common`)
MID_ARMS = {"ntp": ["refine.ttt_ppo_update=false"], "refine": ["refine.ttt_ppo_update=true"]}
POST_ARMS = {"sft": ["refine.ttt_sft_update=false", "refine.ttt_ppo_update=false"],
             "refine": ["refine.ttt_sft_update=true", "refine.ttt_ppo_update=true"]}


def common(sizes, model: Path, out: Path, seed: int, steps: int) -> list[str]:
    return [
        "+preset=embedded_demo", f"actor_rollout_ref.model.path={model}", f"trainer.default_local_dir={out}",
        f"trainer.experiment_name={out.parent.name}_{out.name}", "trainer.logger=[console,file]",
        f"trainer.total_training_steps={steps}", f"trainer.save_freq={steps}", "trainer.resume_mode=disable",
        f"actor_rollout_ref.actor.optim.lr={sizes.lr}", f"refine.seed={seed}", f"data.seed={seed}",
        "refine.nsp_mode=fast", f"refine.n_chunks={sizes.n_chunks}", f"refine.response_length={sizes.response_length}",
        f"refine.sampling={sizes.sampling}",
        # always a Ray instance of its own: never attach to another process's cluster (parallel runs, other users)
        "++ray_kwargs.ray_init.address=local",
    ]


def mid_overrides(sizes, model, out, seed, arm, data, extra=()) -> list[str]:
    return common(sizes, model, out, seed, sizes.mid_steps) + MID_ARMS[arm] + [
        f"data.train_files={data['train']}", f"data.val_files={data['val']}",
        f"data.max_prompt_length={sizes.train_len}", f"data.train_batch_size={sizes.mid_batch}",
        f"trainer.test_freq={max(1, sizes.mid_steps // 4)}", f"refine.reward={sizes.reward}",
        f"refine.ppo_coef={sizes.ppo_coef}", "refine.ttt_sft_update=true", "refine.val_get_loss=true",
        *extra,
    ]


def qa_common(sizes) -> list[str]:
    return [
        f"data.train_files={QA_TRAIN}", f"data.val_files={QA_TEST}", "data.prompt_key=prompt",
        "refine.answer_key=answer", "refine.data_source_key=task",
        f"custom_reward_function.path={REPO / 'refine' / 'scoring' / 'reward.py'}",
        f"data.max_prompt_length={QA_MAX_PROMPT}", f"data.max_response_length={sizes.answer_tokens}",
        f"data.val_batch_size={sizes.qa_val_batch}", "refine.val_get_loss=false",
        "refine.mini_batch_size=2", "refine.micro_batch_size_per_gpu=2", "refine.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    ]


def post_overrides(sizes, model, out, seed, arm) -> list[str]:
    return common(sizes, model, out, seed, sizes.post_steps) + qa_common(sizes) + POST_ARMS[arm] + [
        f"data.train_batch_size={sizes.post_batch}", f"actor_rollout_ref.actor.ppo_mini_batch_size={sizes.post_batch}",
        "refine.task_sft_update=true", f"refine.reward={sizes.post_reward}", f"refine.ppo_coef={sizes.ppo_coef}",
        f"trainer.test_freq={sizes.post_steps}",
    ]


def ttt_overrides(sizes, model, out, seed) -> list[str]:
    """Test-time training on the held-out QA prompts (no answers seen): the inner loop (NTP + NSP-GRPO on the
    prompts) for one pass over them, cumulative, then the weights are kept and scored like every other model.

    The official TTT answers each batch right after its own inner update; here the answers are scored after the
    whole pass (transductive over the 16 prompts), because a teacher-forced score needs the updated weights."""
    prompts_only = [o for o in qa_common(sizes) if not o.startswith("data.train_files=")]
    return common(sizes, model, out, seed, sizes.ttt_steps) + prompts_only + [
        f"data.train_files={QA_TEST}", f"data.train_batch_size={sizes.qa_val_batch}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={sizes.qa_val_batch}",
        "refine.ttt_sft_update=true", "refine.ttt_ppo_update=true", "refine.task_sft_update=false",
        f"refine.reward={sizes.ttt_reward}", f"refine.ppo_coef={sizes.ttt_ppo_coef}",
        f"trainer.test_freq={sizes.ttt_steps}",
    ]


def run_trainer(out: Path, overrides: list[str]) -> dict:
    """`python -m refine.main <overrides>` logging to out/train.log; returns (and caches) out/run.json."""
    done = out / "run.json"
    if done.exists():
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.jsonl",):  # a rerun after an interruption starts the run over
        (out / stale).unlink(missing_ok=True)
    command = [sys.executable, "-m", "refine.main", *overrides]
    print(f"repro: running {out.relative_to(out.parents[2])} ...", flush=True)
    start = time.time()
    with open(out / "train.log", "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.time() - start
    if code != 0:
        raise SystemExit(f"repro: trainer run failed (exit {code}); see {out / 'train.log'}")
    metrics = read_metrics(out)
    record = {"wall_s": round(wall, 1), "train_s": round(sum(m.get("timing_s/step", 0.0) for m in metrics), 1),
              "command": command}
    done.write_text(json.dumps(record, indent=1))
    print(f"repro:   done in {wall:.0f}s", flush=True)
    return record


def read_metrics(out: Path) -> list[dict]:
    """Per-step metric records of a run (verl Tracking 'file' backend: metrics.jsonl, {"step", "data"})."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"step": r["step"], **r["data"]} for r in records]


def export_hf(out: Path) -> Path:
    """The run's latest checkpoint as an HF folder out/hf (model + tokenizer), from the FSDP shard."""
    hf = out / "hf"
    if (hf / "model.safetensors").exists():
        return hf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import refine.models  # noqa: F401

    step = (out / "latest_checkpointed_iteration.txt").read_text().strip()
    actor = out / f"global_step_{step}" / "actor"
    shards = sorted(actor.glob("model_world_size_*_rank_*.pt"))
    if [s.name for s in shards] != ["model_world_size_1_rank_0.pt"]:
        raise SystemExit(f"repro: expected one world-size-1 shard in {actor}, found {[s.name for s in shards]}")
    state = torch.load(shards[0], map_location="cpu", weights_only=True)
    state = {k: (v.to_local() if hasattr(v, "to_local") else v) for k, v in state.items()}
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(actor / "huggingface"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"repro: {shards[0]} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.save_pretrained(hf, safe_serialization=True)
    AutoTokenizer.from_pretrained(actor / "huggingface").save_pretrained(hf)
    return hf
