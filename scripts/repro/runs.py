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

# the arms: what differs between them. Every run takes one optimiser step per global step in the inner loop
# (refine.mini_batch_size = the batch: one combined NTP + NSP-GRPO step, or one NTP step; update_plan.py), plus one
# task-SFT step per global step in post-training; the counts are read back from each run's metrics.
MID_ARMS = {
    "ntp": ["refine.ttt_ppo_update=false"],
    "refine": ["refine.ttt_ppo_update=true"],
    "ntp_2x": ["refine.ttt_ppo_update=false"],                       # positive control: 2x updates and documents
    "refine_n4": ["refine.ttt_ppo_update=true", "refine.n_chunks=1", "refine.n_per_prefix=4"],  # same rollouts
    "refine_rl": ["refine.ttt_ppo_update=true", "refine.sft_coef=0.0"],                         # RL alone
}
POST_ARMS = {"ctl": ["refine.ttt_sft_update=true", "refine.ttt_ppo_update=false"],   # inner NTP + task SFT
             "refine": ["refine.ttt_sft_update=true", "refine.ttt_ppo_update=true"]}  # inner NTP+NSP + task SFT
TTT_ARMS = {"ttt_ntp": ["refine.ttt_ppo_update=false"], "ttt_refine": ["refine.ttt_ppo_update=true"]}


def common(sizes, model: Path, out: Path, seed: int, steps: int, batch: int) -> list[str]:
    return [
        "+preset=embedded_demo", f"actor_rollout_ref.model.path={model}", f"trainer.default_local_dir={out}",
        f"trainer.experiment_name={out.parent.name}_{out.name}", "trainer.logger=[console,file]",
        f"trainer.total_training_steps={steps}", f"trainer.save_freq={steps}", "trainer.resume_mode=disable",
        f"actor_rollout_ref.actor.optim.lr={sizes.lr}", f"refine.seed={seed}", f"data.seed={seed}",
        "refine.nsp_mode=fast", f"refine.n_chunks={sizes.n_chunks}", f"refine.n_per_prefix={sizes.n_per_prefix}",
        f"refine.response_length={sizes.response_length}", f"refine.sampling={sizes.sampling}",
        f"refine.sft_coef={sizes.sft_coef}", f"data.train_batch_size={batch}", f"refine.mini_batch_size={batch}",
        f"data.max_prompt_length={sizes.mid_len}", "refine.ttt_sft_update=true", "refine.plot=false",
        # always a Ray instance of its own: never attach to another process's cluster (parallel runs, other users)
        "++ray_kwargs.ray_init.address=local",
    ]


def mid_overrides(sizes, model, out, seed, arm, data) -> list[str]:
    steps = sizes.control_steps if arm == "ntp_2x" else sizes.mid_steps
    return common(sizes, model, out, seed, steps, sizes.mid_batch) + [
        f"data.train_files={data['mid_train']}", f"data.val_files={data['mid_val']}",
        f"trainer.test_freq={steps}", f"refine.reward={sizes.reward}", f"refine.ppo_coef={sizes.ppo_coef}",
        "refine.val_get_loss=true", *MID_ARMS[arm],
    ]


def qa_common(sizes, batch: int) -> list[str]:
    return [
        "data.prompt_key=prompt", "refine.answer_key=answer", "refine.data_source_key=task",
        f"custom_reward_function.path={REPO / 'refine' / 'scoring' / 'reward.py'}",
        "data.max_response_length=4", f"data.val_batch_size={batch}", "refine.val_get_loss=false",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={batch}",   # task SFT: one optimiser step per global step
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
    ]


def post_overrides(sizes, model, out, seed, arm, data) -> list[str]:
    return common(sizes, model, out, seed, sizes.post_steps, sizes.post_batch) + qa_common(sizes, sizes.post_batch) + [
        f"data.train_files={data['post_train']}", f"data.val_files={data['post_val']}",
        "refine.task_sft_update=true", f"refine.reward={sizes.post_reward}", f"refine.ppo_coef={sizes.ppo_coef}",
        f"trainer.test_freq={sizes.post_steps}", *POST_ARMS[arm],
    ]


def ttt_overrides(sizes, model, out, seed, arm, data) -> list[str]:
    """Test-time training on the held-out TTT prompts (no answer is trained on: task SFT off): the inner loop for one
    pass over them, cumulative; the weights are then scored on the same items (transductive over the prompts)."""
    steps = sizes.ttt_items // sizes.ttt_batch
    return common(sizes, model, out, seed, steps, sizes.ttt_batch) + qa_common(sizes, sizes.ttt_batch) + [
        f"data.train_files={data['ttt']}", f"data.val_files={data['ttt']}", "data.shuffle=false",
        "refine.task_sft_update=false", f"refine.reward={sizes.ttt_reward}", f"refine.ppo_coef={sizes.ttt_ppo_coef}",
        f"trainer.test_freq={steps}", *TTT_ARMS[arm],
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
