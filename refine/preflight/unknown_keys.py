"""Refuse config keys that nothing reads (before Ray): `+foo_bar=1`, `+trainer.save_freqq=1` (a typo that would
silently disable checkpoints), `+actor_rollout_ref.actor.ttt_n_chunk=8` (a typo of an official key).

A key is known when it exists in the composed base config (`configs/refine_trainer.yaml`, i.e. verl's
`ppo_trainer` plus the `refine:` group) or in a phase preset, when it is an official ReFINE key (spec §3), or when
it lies under a section whose contents verl passes on as a free-form dict (model `override_config`, Ray's init
and runtime env, reward kwargs, ...). The error names the key, the value and the closest known key.
"""

from __future__ import annotations

import difflib
import functools

from omegaconf import DictConfig, OmegaConf

from refine.preflight.aliases import OFFICIAL_ALIASES
from refine.preflight.compose import CONFIG_DIR, compose
from refine.preflight.schema import REFINE_KEYS

# verl sections whose contents are free-form (passed through to transformers, Ray, a reward function, ...)
OPEN_SECTIONS = (
    "actor_rollout_ref.model.override_config",
    "actor_rollout_ref.model.custom_chat_template",
    "actor_rollout_ref.rollout.engine_kwargs",
    "ray_kwargs",
    "reward.custom_reward_function.reward_kwargs",
    "custom_reward_function",
    "global_profiler",
)


def leaf_paths(node, prefix: str = "") -> set[str]:
    """Dotted paths of every leaf of a (Dict)Config; an empty dict counts as a leaf."""
    if isinstance(node, DictConfig):
        keys = list(node.keys())
        if not keys:
            return {prefix} if prefix else set()
        paths: set[str] = set()
        for key in keys:
            child = node._get_node(key)
            path = f"{prefix}.{key}" if prefix else str(key)
            paths |= leaf_paths(child if isinstance(child, DictConfig) else None, path)
        return paths
    return {prefix}


@functools.lru_cache(maxsize=1)
def known_paths() -> frozenset[str]:
    """Every leaf of the base config and of each phase preset, every official key and every `refine.*` key."""
    known = set(leaf_paths(compose([])))
    for preset in sorted((CONFIG_DIR / "preset").glob("*.yaml")):
        known |= leaf_paths(compose([f"+preset={preset.stem}"]))
    known |= set(OFFICIAL_ALIASES)
    known |= {f"refine.{key}" for key in REFINE_KEYS}
    return frozenset(known)


def allowed(path: str, known: frozenset[str]) -> bool:
    if path in known or any(path == s or path.startswith(f"{s}.") for s in OPEN_SECTIONS):
        return True
    # a structure given where the base config has a single value or an empty dict (e.g. data.train_files: null)
    parts = path.split(".")
    return any(".".join(parts[:i]) in known for i in range(1, len(parts)))


def check_unknown_keys(config: DictConfig) -> None:
    """ValueError (one line) naming the first key that no part of the config reads, with the closest known one."""
    known = known_paths()
    for path in sorted(leaf_paths(config)):
        if allowed(path, known):
            continue
        value = OmegaConf.select(config, path, throw_on_missing=False)
        close = difflib.get_close_matches(path, known, n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else "remove it (see configs/refine_trainer.yaml for the keys)"
        raise ValueError(f"{path}={value!r}: unknown key, nothing in verl or ReFINE reads it. Fix: {hint}")
