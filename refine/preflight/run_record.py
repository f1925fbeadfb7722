"""A run's own record: the resolved config in the run folder (secrets masked, settings never), a resume that
refuses to continue a checkpoint written under a different config, and a run that refuses to write over an earlier
run's files under the same name.

`resolved_config.yaml` is written before Ray starts. With `trainer.resume_mode=auto`, a run folder that holds a
checkpoint and a recorded config is resumed only when the keys that define the run (`RUN_IDENTITY`) agree;
otherwise the run stops before Ray with the differences, key by key. An explicit
`trainer.resume_mode=resume_path` loads any checkpoint (the user asked for it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from refine.files import atomic_write_bytes
from refine.runs.state import current_state, read_state

METRICS_FILE = "metrics.jsonl"  # the trainer's (refine.driver.metrics_file); named here without importing torch

RESOLVED_CONFIG_FILE = "resolved_config.yaml"
# what makes two runs the same run (a resume may change the length, logging, validation and save cadence)
RUN_IDENTITY = (
    "refine",
    "actor_rollout_ref.model.path",
    "actor_rollout_ref.actor.optim",
    "data.train_files",
    "data.max_prompt_length",
    "data.train_batch_size",
    "data.prompt_key",
    "trainer.n_gpus_per_node",
    "trainer.nnodes",
)
IGNORED = ("refine.plot", "refine.max_consecutive_skips", "refine._target_")
# A secret by its name: the whole name or its last word (after _ . -) is a credential word, e.g. WANDB_API_KEY,
# HF_TOKEN, hub_token, db_password, AWS_SECRET_ACCESS_KEY. Settings that merely mention tokens
# (ppo_max_token_len_per_gpu, max_num_batched_tokens, skip_tokenizer_init) are not secrets and stay readable, so
# the record can rerun the run.
SECRET_NAME = re.compile(r"(^|[_.\-])(api_?key|apikey|access_?key|secret_?key|secret|token|password|passwd|"
                         r"credentials?)$", re.IGNORECASE)
# a tokenizer's special tokens are named like secrets but are settings
NOT_SECRET = re.compile(r"^(pad|eos|bos|unk|sep|cls|mask)_token$", re.IGNORECASE)
MASK = "***"


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not NOT_SECRET.match(name)


def _environment_secrets() -> set[str]:
    # short values (a flag, a port) would mask unrelated settings that happen to contain them
    return {value for name, value in os.environ.items() if is_secret_name(name) and len(value) >= 8}


def masked(node, secrets: set[str] | None = None):
    """A plain container of `node` with secret-named keys and any value equal to a secret from the environment
    replaced by ***."""
    secrets = _environment_secrets() if secrets is None else secrets
    if isinstance(node, dict):
        return {key: MASK if is_secret_name(str(key)) and value not in (None, "") else masked(value, secrets)
                for key, value in node.items()}
    if isinstance(node, list):
        return [masked(value, secrets) for value in node]
    if isinstance(node, str) and any(secret in node for secret in secrets):
        return MASK
    return node


def record_config(config: DictConfig, run_dir: Path) -> Path:
    """Write the resolved config (masked) into the run folder, atomically; returns its path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = OmegaConf.to_yaml(OmegaConf.create(masked(OmegaConf.to_container(config, resolve=True))))
    path = run_dir / RESOLVED_CONFIG_FILE
    atomic_write_bytes(path, text.encode())
    return path


def _flatten(node, prefix: str) -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}"))
        return out
    return {prefix: node}


def run_identity(container: dict) -> dict:
    """The `RUN_IDENTITY` leaves of a config container, flattened to dotted keys."""
    out = {}
    for key in RUN_IDENTITY:
        node = container
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out.update(_flatten(node, key))
    return {key: value for key, value in out.items() if key not in IGNORED}


def check_resume_matches(config: DictConfig) -> None:
    """ValueError (one line) when `resume_mode=auto` would resume a checkpoint recorded under another config."""
    if str(config.trainer.get("resume_mode", "auto")) != "auto":
        return
    run_dir = Path(str(config.trainer.default_local_dir))
    recorded = run_dir / RESOLVED_CONFIG_FILE
    if not (run_dir / "latest_checkpointed_iteration.txt").exists() or not recorded.is_file():
        return
    before = run_identity(OmegaConf.to_container(OmegaConf.load(recorded), resolve=True))
    now = run_identity(masked(OmegaConf.to_container(config, resolve=True)))
    changed = [f"{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in sorted(set(before) | set(now))
               if before.get(key) != now.get(key)]
    if changed:
        raise ValueError(
            f"trainer.default_local_dir={str(run_dir)!r}: holds a checkpoint of a run with a different config "
            f"({'; '.join(changed)}), and trainer.resume_mode=auto resumes only the same run. Fix: use a new "
            "trainer.experiment_name, or load it anyway with trainer.resume_mode=resume_path "
            "trainer.resume_from_path=<that folder>/global_step_N, or start over with trainer.resume_mode=disable")


def check_not_another_runs_folder(config: DictConfig) -> None:
    """ValueError (one line) when `resume_mode=auto` would write over an earlier run's files instead of resuming it:
    a finished run (unless it has a checkpoint and the run is asked to go on longer) or an ended run without a
    checkpoint. `trainer.resume_mode=disable` starts over on purpose."""
    if str(config.trainer.get("resume_mode", "auto")) != "auto":
        return
    run_dir = Path(str(config.trainer.default_local_dir))
    state = read_state(run_dir)
    now = current_state(state)
    metrics = run_dir / METRICS_FILE
    if now is None and not (metrics.is_file() and metrics.stat().st_size > 0):
        return  # a new run folder (or one holding only what a run before the check left: no record of a run)
    pointer = run_dir / "latest_checkpointed_iteration.txt"
    text = pointer.read_text().strip() if pointer.is_file() else ""
    # an unreadable pointer still leaves step folders, which the resume falls back to (driver/checkpoints.py)
    folders = [int(p.name.split("_")[-1]) for p in run_dir.glob("global_step_*") if p.name.split("_")[-1].isdigit()]
    checkpoint = int(text) if text.isdigit() else max(folders, default=None)
    steps = f"{state['step']} steps" if state else "no run state"
    where = f"trainer.default_local_dir={str(run_dir)!r}"
    fixes = ("pick a new trainer.experiment_name (EXPERIMENT_NAME= for the demo scripts), or start over in it with "
             "trainer.resume_mode=disable")
    if now == "running":
        raise ValueError(f"{where}: a run is still writing there (process {state['pid']} on this host). Fix: wait "
                         f"for it or stop it, or {fixes}")
    if now == "finished":
        total = config.trainer.get("total_training_steps")
        if checkpoint is not None and total is not None and int(total) > checkpoint:
            return  # the same run, asked to go on: resumed from its checkpoint
        resume = (f"resume it with a larger trainer.total_training_steps (its checkpoint is step {checkpoint}), "
                  if checkpoint is not None else "")
        raise ValueError(f"{where}: already holds a finished run ({steps}); running again would write over its "
                         f"metrics. Fix: {resume}{fixes}")
    if checkpoint is None:
        raise ValueError(f"{where}: holds an earlier run ({now or 'unknown state'}, {steps}) with no checkpoint to "
                         f"resume; running again would write over its metrics. Fix: {fixes}")
