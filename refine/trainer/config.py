"""The official key aliases of the `refine:` group, and up-front validation (before Ray starts).

Every ReFINE knob lives in one documented group, `refine:` (the self-validating dataclass `RefineConfig` of
`config_schema`, re-exported here). The official ReFINE command lines add their keys to verl's groups with
`+key=value` (spec §3); `apply_official_aliases` moves each of them onto its `refine.*` name, so those command lines
work unchanged, and an error about such a value names the key the user typed. `prepare_config` runs every check
before Ray starts: unknown keys (`unknown_keys`), each field (`RefineConfig.__post_init__`), the cross-field rules
(`config_rules`), the data files (`data_checks`), the model folder (`model_checks`); each raises one `ValueError`
naming the key/column, the value and the fix. The NSP limits and mode names come from `refine.nsp` (their one home).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from refine.errors import config_error
from refine.trainer.config_schema import (  # noqa: F401 - re-exported: the refine group's one home
    NSP_MODES,
    PHASE_FLAGS,
    REFINE_KEYS,
    TARGET,
    RefineConfig,
    group_of,
    refine_config_from,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# official key (spec §3) -> refine.* name; None = accepted and dropped (officially unused)
OFFICIAL_ALIASES: dict[str, str | None] = {
    "algorithm.ttt_sft_update": "ttt_sft_update",
    "algorithm.ttt_ppo_update": "ttt_ppo_update",
    "algorithm.task_sft_update": "task_sft_update",
    "algorithm.task_ppo_update": "task_ppo_update",
    "algorithm.val_ttt_sft_update": "val_ttt_sft_update",
    "algorithm.val_ttt_ppo_update": "val_ttt_ppo_update",
    "algorithm.val_get_loss": "val_get_loss",
    "algorithm.ttt_sampling": "sampling",
    "actor_rollout_ref.actor.ttt_n_chunks": "n_chunks",
    "actor_rollout_ref.actor.ttt_n": "n_per_prefix",
    "actor_rollout_ref.actor.ttt_reward": "reward",
    "actor_rollout_ref.actor.ttt_sft_loss_coef": "sft_coef",
    "actor_rollout_ref.actor.ttt_ppo_loss_coef": "ppo_coef",
    "actor_rollout_ref.actor.ttt_ppo_mini_batch_size": "mini_batch_size",
    "actor_rollout_ref.actor.ttt_ppo_micro_batch_size_per_gpu": "micro_batch_size_per_gpu",
    "actor_rollout_ref.rollout.ttt_log_prob_micro_batch_size_per_gpu": "log_prob_micro_batch_size_per_gpu",
    "actor_rollout_ref.rollout.ttt_temperature": "temperature",
    "actor_rollout_ref.rollout.ttt_response_length": "response_length",
    "actor_rollout_ref.rollout.ttt_top_p": "top_p",
    "actor_rollout_ref.rollout.ttt_top_k": "top_k",
    "actor_rollout_ref.ref.ttt_log_prob_micro_batch_size_per_gpu": None,
    "data.answer_key": "answer_key",
    "data.data_source_key": "data_source_key",
}


def apply_official_aliases(config: DictConfig) -> dict[str, str]:
    """Move every official key (spec §3) present in `config` onto `refine.*`, in place; returns {refine field:
    official key} of the values moved (what the user typed, for the error messages: `spelled_as_typed`).

    The official keys are removed from verl's groups (verl builds dataclasses from those groups and would reject
    an unknown field); the official key's value replaces the `refine.*` value of the base config or a preset. Both
    spellings typed on one command line with different values are refused by `alias_conflicts` (before Hydra).
    """
    typed = {}
    with open_dict(config):
        if config.get("refine") is None:
            config.refine = {}
        for official, name in OFFICIAL_ALIASES.items():
            parent_path, _, leaf = official.rpartition(".")
            parent = OmegaConf.select(config, parent_path)
            if parent is None or leaf not in parent:
                continue
            value = parent[leaf]
            with open_dict(parent):
                parent.pop(leaf)
            if name is not None:
                config.refine[name] = value
                typed[name] = official
    return typed


def spelled_as_typed(message: str, typed: dict[str, str]) -> str:
    """`message` with every `refine.<field>` whose value came from an official key written as that key."""
    return re.sub(r"\brefine\.(\w+)", lambda m: typed.get(m.group(1), m.group(0)), message)


def alias_conflicts(overrides: list[str]) -> str | None:
    """The error line when one command line gives an official key and its `refine.*` name different values."""
    given = {}
    for item in overrides:
        key, sep, value = item.lstrip("+").partition("=")
        if sep:
            given[key] = value
    for official, name in OFFICIAL_ALIASES.items():
        if name and official in given and f"refine.{name}" in given and given[official] != given[f"refine.{name}"]:
            return (f"+{official}={given[official]}: conflicts with refine.{name}={given[f'refine.{name}']} on the "
                    f"same command line (the same setting twice). Fix: give only one of the two keys")
    return None


_fail = config_error  # the one error shape (refine.errors)


def _required(rc: RefineConfig, names: list[str], why: str) -> None:
    for name in names:
        if getattr(rc, name) is None:
            official = next((k for k, v in OFFICIAL_ALIASES.items() if v == name), None)
            alt = f" (or the official +{official}=...)" if official else ""
            _fail(f"refine.{name}", None, f"missing, required when {why}", f"set refine.{name}=...{alt}")


def n_workers(config: DictConfig) -> int:
    """Data-parallel world size of the actor worker group."""
    return int(config.trainer.n_gpus_per_node) * int(config.trainer.nnodes)


def absolutize_paths(config: DictConfig, base: Path | None = None) -> None:
    """Make relative model/data/checkpoint paths absolute (Ray workers do not share the driver's cwd).

    A relative path is taken against the current directory if it exists there, else against the repo root
    (so the embedded default also works when started from elsewhere).
    """
    cwd = Path.cwd()
    roots = [cwd, REPO_ROOT] if base is None else [base]

    def fix(p):
        if p is None or str(p).startswith(("hdfs://", "pkg://", "file://")):
            return p
        p = os.path.expanduser(str(p))
        if os.path.isabs(p):
            return p
        for root in roots:
            if (root / p).exists():
                return str(root / p)
        return str(roots[0] / p)

    with open_dict(config):
        model = config.actor_rollout_ref.model
        model.path = fix(model.path)
        if model.get("tokenizer_path"):
            model.tokenizer_path = fix(model.tokenizer_path)
        for key in ("train_files", "val_files"):
            value = config.data.get(key)
            if value is None:
                continue
            config.data[key] = fix(value) if isinstance(value, str) else [fix(v) for v in value]
        config.trainer.default_local_dir = str(Path(fix(config.trainer.default_local_dir)))


def prepare_config(config: DictConfig) -> RefineConfig:
    """Aliases, unknown-key check, path resolution and the whole validation; runs before Ray starts.

    Mutates `config` (aliases moved, paths absolute, `refine` group completed with defaults) and returns the
    typed `RefineConfig`. An error about a value given through an official key names that key.
    """
    from refine.trainer.unknown_keys import check_unknown_keys

    check_unknown_keys(config)  # typos (`+trainer.save_freqq=1`) would otherwise be accepted silently
    typed = apply_official_aliases(config)
    try:
        return _validate(config)
    except ValueError as exc:
        message = spelled_as_typed(str(exc), typed)
        if message == str(exc):
            raise
        raise ValueError(message) from exc


def _validate(config: DictConfig) -> RefineConfig:
    from refine.trainer.config_rules import check_generation_data, validate_refine, validates_by_generation
    from refine.trainer.data_checks import check_nsp_row_lengths, check_overlong, validate_data

    target = OmegaConf.select(config, "refine._target_") or TARGET
    rc = refine_config_from(config)
    with open_dict(config):
        config.refine = group_of(rc, target)
    absolutize_paths(config)
    validate_refine(rc, config)
    validate_data(rc, config)
    rc = check_generation_data(rc, config)
    with open_dict(config):
        config.refine = group_of(rc, target)
    model = config.actor_rollout_ref.model
    tokenizer_path = model.get("tokenizer_path") or model.path
    if not os.path.isfile(os.path.join(str(tokenizer_path), "config.json")) and not os.path.isfile(
        os.path.join(str(tokenizer_path), "tokenizer_config.json")
    ):
        _fail("actor_rollout_ref.model.path", model.path, "no local HF model/tokenizer directory there",
              "point it at a local HF model directory (the demo's is built by scripts/build_demo_model.py)")
    from refine.trainer.model_checks import check_model_dir, check_tokenizer, check_writable

    check_model_dir(str(model.path))
    check_tokenizer(str(tokenizer_path))
    check_writable("trainer.default_local_dir", str(config.trainer.default_local_dir))
    needs_tokens = rc.ttt_ppo_update or rc.val_ttt_ppo_update or rc.task_sft_update
    if needs_tokens or validates_by_generation(rc, config):
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        # The model classes are not registered yet in this light-weight check, so transformers would warn that
        # config.json names an unknown model type; only the tokenizer is needed here.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
        finally:
            hf_logging.set_verbosity(verbosity)
        check_nsp_row_lengths(rc, config, tokenizer)
        check_overlong(rc, config, tokenizer)
    return rc


__all__ = [
    "RefineConfig",
    "OFFICIAL_ALIASES",
    "alias_conflicts",
    "spelled_as_typed",
    "PHASE_FLAGS",
    "REFINE_KEYS",
    "apply_official_aliases",
    "refine_config_from",
    "prepare_config",
    "n_workers",
]
