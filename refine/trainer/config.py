"""The `refine:` config group, the official key aliases, and up-front validation (before Ray starts).

Every ReFINE knob lives in one documented group, `refine:` (the dataclass `RefineConfig` below). The official
ReFINE command lines add their keys to verl's groups with `+key=value` (spec §3); `apply_official_aliases`
moves each of them onto its `refine.*` name, so those command lines work unchanged. `prepare_config` runs every
check before Ray starts: unknown keys (`unknown_keys`), the cross-field rules (`config_rules`), the data files
(`data_checks`), the model folder (`model_checks`); each raises one `ValueError` naming the key/column, the value
and the fix. The NSP limits and mode names come from `refine.nsp` (their one home).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from refine.errors import config_error

REPO_ROOT = Path(__file__).resolve().parents[2]

PHASE_FLAGS = (
    "ttt_sft_update",
    "ttt_ppo_update",
    "task_sft_update",
    "task_ppo_update",
    "val_ttt_sft_update",
    "val_ttt_ppo_update",
    "val_get_loss",
)
NSP_MODES = ("faithful", "fast")


@dataclass
class RefineConfig:
    """All ReFINE knobs (the `refine:` group). Defaults are the official ones (spec §3, §2.E).

    Phase flags (spec §1): which updates run where.
      ttt_sft_update / ttt_ppo_update: inner-loop NTP / NSP-GRPO on each training batch (mid- and post-training).
      task_sft_update / task_ppo_update: outer task update on each training batch (post-training).
      val_ttt_sft_update / val_ttt_ppo_update: inner loop on each validation batch before generating (TTT).
      val_get_loss: mid-training validation (val_loss / val_em_score) instead of generation.
    NSP (spec §2.A):
      sampling: position selection, entropy | uniform | argmax | argmin.
      n_chunks (C): prefixes per sequence.  n_per_prefix (ttt_n): rollouts per prefix.
      response_length (k): rollout length, ≤ 20.  temperature / top_p / top_k: rollout sampling (top_k 0 = off).
      reward: cosine_similarity | binary | hybrid.
    Update (spec §2.C):
      sft_coef / ppo_coef: weights of the NTP and PG terms in the combined update.
      mini_batch_size: global mini-batch in sequences (×C×ttt_n/W rows per rank).
      micro_batch_size_per_gpu: micro-batch of both parts of the update.
      log_prob_micro_batch_size_per_gpu: micro-batch of the analysis forward, rollouts, old log-probs, val loss.
      ntp_pad_mask: `model` = the model's own NTP loss (official: DeltaNet counts pads, LaCT masks them, Q6);
        `mask` = always mask pad positions (deviation flag).
    Data: answer_key / data_source_key (post-training and TTT; spec §4.1).
    Reproducibility: seed drives position selection and rollout sampling (the official code is unseeded, Q27).
    nsp_mode: the NSP implementation behind `refine.trainer.nsp_step`: `faithful` (the official algorithm) or
      `fast` (rollouts and the PPO forward branch off the recurrent state at each position; DeltaNet / GDN; see
      docs/fast_nsp.md).
    Issue-8 knobs (post-training / TTT): ttt_reset (cumulative | batch), on_overlong (truncate | error),
      use_row_max_gen_tokens.
    plot: write a PNG of rewards and losses per step into the run directory.
    max_consecutive_skips: stop the run (non-zero exit) after this many global steps in a row that did not train
      (every optimiser step skipped for a non-finite gradient norm, or a non-finite loss).
    """

    ttt_sft_update: bool = False
    ttt_ppo_update: bool = False
    task_sft_update: bool = False
    task_ppo_update: bool = False
    val_ttt_sft_update: bool = False
    val_ttt_ppo_update: bool = False
    val_get_loss: bool = False

    sampling: str = "entropy"
    n_chunks: int | None = None
    n_per_prefix: int | None = None
    response_length: int | None = None
    temperature: float | None = None
    top_p: float = 1.0
    top_k: int = 0
    reward: str | None = None

    sft_coef: float | None = None
    ppo_coef: float | None = None
    mini_batch_size: int | None = None
    micro_batch_size_per_gpu: int | None = None
    log_prob_micro_batch_size_per_gpu: int | None = None
    ntp_pad_mask: str = "model"

    answer_key: str | None = None
    data_source_key: str | None = None

    seed: int = 1
    nsp_mode: str = "faithful"

    ttt_reset: str = "cumulative"
    on_overlong: str = "truncate"
    use_row_max_gen_tokens: bool = False

    plot: bool = True
    max_consecutive_skips: int = 3

    @property
    def inner_enabled(self) -> bool:
        return self.ttt_sft_update or self.ttt_ppo_update

    @property
    def outer_enabled(self) -> bool:
        return self.task_sft_update or self.task_ppo_update


REFINE_KEYS = tuple(f.name for f in dataclasses.fields(RefineConfig))

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


def apply_official_aliases(config: DictConfig) -> DictConfig:
    """Move every official key (spec §3) present in `config` onto `refine.*`, in place; returns `config`.

    The official keys are removed from verl's groups (verl builds dataclasses from those groups and would reject
    an unknown field); the official key's value replaces the `refine.*` value of the base config or a preset. Both
    spellings typed on one command line with different values are refused by `alias_conflicts` (before Hydra).
    """
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
    return config


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


def refine_config_from(config: DictConfig) -> RefineConfig:
    """The typed `RefineConfig` of a composed config; an unknown `refine.*` key is a ValueError."""
    group = config.get("refine") or {}
    raw = OmegaConf.to_container(group, resolve=True) if isinstance(group, DictConfig) else dict(group)
    unknown = sorted(set(raw) - set(REFINE_KEYS))
    if unknown:
        raise ValueError(
            f"unknown key(s) refine.{', refine.'.join(unknown)}; the refine group accepts: {', '.join(REFINE_KEYS)} "
            "(see refine/trainer/config.py RefineConfig)"
        )
    return RefineConfig(**raw)


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
    typed `RefineConfig`.
    """
    from refine.trainer.config_rules import check_generation_data, validate_refine, validates_by_generation
    from refine.trainer.data_checks import check_nsp_row_lengths, check_overlong, validate_data
    from refine.trainer.unknown_keys import check_unknown_keys

    check_unknown_keys(config)  # typos (`+trainer.save_freqq=1`) would otherwise be accepted silently
    apply_official_aliases(config)
    rc = refine_config_from(config)
    with open_dict(config):
        config.refine = OmegaConf.structured(rc)
    absolutize_paths(config)
    validate_refine(rc, config)
    validate_data(rc, config)
    rc = check_generation_data(rc, config)
    with open_dict(config):
        config.refine = OmegaConf.structured(rc)
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
    "PHASE_FLAGS",
    "REFINE_KEYS",
    "apply_official_aliases",
    "refine_config_from",
    "prepare_config",
    "n_workers",
]
