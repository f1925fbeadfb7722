"""A run's own record: the resolved config in the run folder (secrets masked), and a resume that refuses to
continue a checkpoint written under a different config.

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
SECRET_NAME = re.compile(r"(api_?key|token|secret|password)", re.IGNORECASE)
MASK = "***"


def _environment_secrets() -> set[str]:
    return {value for name, value in os.environ.items() if SECRET_NAME.search(name) and len(value) >= 8}


def masked(node, secrets: set[str] | None = None):
    """A plain container of `node` with secret-named keys and any value equal to a secret from the environment
    replaced by ***."""
    secrets = _environment_secrets() if secrets is None else secrets
    if isinstance(node, dict):
        return {key: MASK if SECRET_NAME.search(str(key)) and value not in (None, "") else masked(value, secrets)
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
