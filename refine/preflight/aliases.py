"""The official key aliases of the `refine:` group (spec §3).

The official ReFINE command lines add their keys to verl's groups with `+key=value`; `apply_official_aliases` moves
each of them onto its `refine.*` name (the self-validating dataclass `RefineConfig` of `schema`), so those command
lines work unchanged, and an error about such a value names the key the user typed (`spelled_as_typed`).
`require` reports a missing `refine.*` value with its official spelling.
"""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf, open_dict

from refine.errors import config_error
from refine.preflight.schema import RefineConfig

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


def require(rc: RefineConfig, names: list[str], why: str) -> None:
    """One-line error for the first of `names` that is unset, naming its official key too."""
    for name in names:
        if getattr(rc, name) is None:
            official = next((k for k, v in OFFICIAL_ALIASES.items() if v == name), None)
            alt = f" (or the official +{official}=...)" if official else ""
            config_error(f"refine.{name}", None, f"missing, required when {why}", f"set refine.{name}=...{alt}")
