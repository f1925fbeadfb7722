"""The `refine:` config group as a self-validating dataclass, built from the composed config through `_target_`.

`RefineConfig` is the one home of every ReFINE knob: its fields are the keys, their defaults the defaults and their
`help` the documentation (`python -m refine.main --help` prints them). `__post_init__` checks each field on its own
(type, choices, range) and raises one line naming `refine.<field>`; rules that involve other keys live in
`refine.preflight.rules`. The choice lists of the NSP knobs are read from `refine.nsp` at check time (their one home).

Hydra needs every key present for a command-line override without `+`, so `register_defaults` stores the fields
with their defaults in Hydra's ConfigStore (`refine_defaults`, in the defaults list of configs/refine_trainer.yaml)
instead of restating them in YAML (verl's own YAMLs list every field next to the dataclass and keep the two in step
with a generator script). The YAML keeps only `_target_`, and `refine_config_from` builds the dataclass with verl's
`omega_conf_to_dataclass`, as verl builds its own config dataclasses.
"""

from __future__ import annotations

import math
import textwrap
import typing
from dataclasses import dataclass, field, fields

from refine.errors import config_error

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
NTP_PAD_MASKS = ("model", "mask")
TTT_RESETS = ("cumulative", "batch")
OVERLONG_ACTIONS = ("truncate", "error")
# counts that must be >= 1 when set (C, ttt_n, batch sizes, the skip limit)
POSITIVE_COUNTS = ("n_chunks", "n_per_prefix", "mini_batch_size", "micro_batch_size_per_gpu",
                   "log_prob_micro_batch_size_per_gpu", "max_consecutive_skips")
DEFAULTS_NODE = "refine_defaults"


def _knob(default, doc: str):
    # "help" is the metadata key transformers' HfArgumentParser reads as a field's documentation too
    return field(default=default, metadata={"help": doc})


def field_choices() -> dict[str, tuple]:
    """The allowed values of each field that has a fixed set, read now from their homes."""
    # refine.nsp imports torch: kept off `--help` and the entry point's import, before the stack check
    from refine.nsp import positions, rewards

    return {"sampling": positions.SAMPLING_MODES, "reward": rewards.REWARD_KINDS, "nsp_mode": NSP_MODES,
            "ntp_pad_mask": NTP_PAD_MASKS, "ttt_reset": TTT_RESETS, "on_overlong": OVERLONG_ACTIONS}


def _limits_in_words() -> dict[str, str]:
    """For `--help`: the limits of the fields whose limit lives elsewhere (checked by `refine.preflight.rules`)."""
    from refine.nsp import positions  # torch: as in `field_choices`

    return {"response_length": f"in [1, {positions.CLAMP_MARGIN}]"}


@dataclass(frozen=True)
class RefineConfig:
    """All ReFINE knobs (the `refine:` group). Defaults are the official ones (spec §3, §2.E); None = no default.

    A None field is required by the phases that use it (checked in `refine.preflight.rules`). Each field's `help` says what
    it does.

    Phase flags (spec §1) choose which updates run where; the NSP knobs (spec §2.A) shape the inner loop's rollouts;
    the update knobs (spec §2.C) its combined NTP + PG update.
    """

    ttt_sft_update: bool = _knob(False, "inner-loop NTP on each training batch (mid- and post-training)")
    ttt_ppo_update: bool = _knob(False, "inner-loop NSP-GRPO on each training batch (mid- and post-training)")
    task_sft_update: bool = _knob(False, "outer task SFT on the first gold answer of each training row "
                                  "(post-training)")
    task_ppo_update: bool = _knob(False, "outer task GRPO with the task reward (post-training variant)")
    val_ttt_sft_update: bool = _knob(False, "inner-loop NTP on each validation batch before generating (TTT)")
    val_ttt_ppo_update: bool = _knob(False, "inner-loop NSP-GRPO on each validation batch before generating (TTT)")
    val_get_loss: bool = _knob(False, "mid-training validation (val_loss / val_em_score) instead of generation")

    sampling: str = _knob("entropy", "how the rollout start of each chunk is chosen")
    n_chunks: int | None = _knob(None, "C: prefixes (rollout starts) per sequence")
    n_per_prefix: int | None = _knob(None, "ttt_n: rollouts per prefix (with > 1 the GRPO groups are per prefix)")
    response_length: int | None = _knob(None, "k: rollout length in tokens; the clamp keeps the last positions of "
                                        "each row for the ground truth (spec Q16)")
    temperature: float | None = _knob(None, "sampling and log-prob temperature of the NSP rollouts, > 0")
    top_p: float = _knob(1.0, "NSP rollout top-p, in (0, 1]")
    top_k: int = _knob(0, "NSP rollout top-k (0 = off)")
    reward: str | None = _knob(None, "NSP reward per rollout token against the ground-truth continuation")

    sft_coef: float | None = _knob(None, "weight of the NTP term in the combined inner update")
    ppo_coef: float | None = _knob(None, "weight of the PG term in the combined inner update")
    mini_batch_size: int | None = _knob(None, "global inner-update mini-batch in sequences (x C x ttt_n / workers "
                                        "rollout rows per rank)")
    micro_batch_size_per_gpu: int | None = _knob(None, "micro-batch of both parts of the inner update")
    log_prob_micro_batch_size_per_gpu: int | None = _knob(None, "micro-batch of the analysis forward, rollouts, old "
                                                          "log-probs and the validation loss")
    ntp_pad_mask: str = _knob("model", "model: the model's own NTP loss (official: DeltaNet counts pads, LaCT masks "
                              "them, Q6); mask: always mask pad positions (deviation flag)")

    answer_key: str | None = _knob(None, "column of the gold answers, a list of strings (post-training, TTT)")
    data_source_key: str | None = _knob(None, "column naming each row's task, which picks the scorer; unset: the "
                                        "RULER / LongBench files' `task` column when present")

    seed: int = _knob(1, "seeds position selection and rollout sampling (the official code is unseeded, Q27)")
    nsp_mode: str = _knob("faithful", "faithful: the official algorithm; fast: rollouts and the PPO forward branch "
                          "off the recurrent state at each position (DeltaNet / GDN, docs/fast_nsp.md)")

    ttt_reset: str = _knob("cumulative", "cumulative: adapt over the whole validation file (official, Q1); batch: "
                           "restore weights and optimiser before every validation batch")
    on_overlong: str = _knob("truncate", "prompts longer than data.max_prompt_length: truncate (official head "
                             "truncation, with a warning) or error")
    use_row_max_gen_tokens: bool = _knob(False, "generate up to each row's max_gen_tokens column (LongBench files)")

    plot: bool = _knob(True, "write a PNG of rewards and losses per step into the run folder")
    max_consecutive_skips: int = _knob(3, "stop the run (non-zero exit) after this many global steps in a row "
                                       "that did not train (non-finite gradient norm or loss)")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
        for name, allowed in field_choices().items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                config_error(f"refine.{name}", value, f"must be one of {allowed}", "pick one of those")
        for name in POSITIVE_COUNTS:
            value = getattr(self, name)
            if value is not None and value < 1:
                config_error(f"refine.{name}", value, "must be >= 1", "use a positive value")
        if self.temperature is not None and not self.temperature > 0:
            config_error("refine.temperature", self.temperature, "must be > 0", "use e.g. 1.0 (official)")
        if not 0 < self.top_p <= 1:
            config_error("refine.top_p", self.top_p, "must be in (0, 1]", "use 1.0 (official: no top-p)")
        if self.top_k < 0:
            config_error("refine.top_k", self.top_k, "must be >= 0", "use 0 (official: no top-k)")

    @property
    def inner_enabled(self) -> bool:
        return self.ttt_sft_update or self.ttt_ppo_update

    @property
    def outer_enabled(self) -> bool:
        return self.task_sft_update or self.task_ppo_update


REFINE_KEYS = tuple(f.name for f in fields(RefineConfig))
TARGET = f"{RefineConfig.__module__}.{RefineConfig.__qualname__}"
_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}


def _check_type(name: str, value, hint) -> None:
    """`value` matches the field's annotation (`int`, `float | None`, ...); a float must be finite."""
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return
    kind = next(t for t in allowed if t is not type(None))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        none = " or null" if type(None) in allowed else ""
        config_error(f"refine.{name}", value, f"must be {_TYPE_WORDS[kind]}{none}", f"give refine.{name} "
                     f"{_TYPE_WORDS[kind]}")


def register_defaults() -> None:
    """Store every field with its default in Hydra's ConfigStore as `refine_defaults` (see the module doc)."""
    from hydra.core.config_store import ConfigStore  # Hydra: the entry point's import stays light

    ConfigStore.instance().store(name=DEFAULTS_NODE, node={f.name: f.default for f in fields(RefineConfig)})


def refine_config_from(config) -> RefineConfig:
    """The validated `RefineConfig` of a composed config's `refine` group, built through its `_target_` (the
    dataclass itself when the group has none). An unknown key or a bad value is a one-line ValueError."""
    from omegaconf import OmegaConf  # as Hydra above

    group = config.get("refine") or {}
    raw = OmegaConf.to_container(group, resolve=True) if OmegaConf.is_config(group) else dict(group)
    raw.setdefault("_target_", TARGET)
    unknown = sorted(set(raw) - set(REFINE_KEYS) - {"_target_"})
    if unknown:
        raise ValueError(f"unknown key(s) refine.{', refine.'.join(unknown)}; the refine group accepts: "
                         f"{', '.join(REFINE_KEYS)} (see python -m refine.main --help)")
    # Hydra and verl (seconds): only a config that is built needs them
    from hydra.errors import InstantiationException
    from verl.utils.config import omega_conf_to_dataclass

    try:
        return omega_conf_to_dataclass(raw)
    except InstantiationException as exc:  # Hydra wraps the dataclass's own one-line error
        if isinstance(exc.__cause__, ValueError):
            raise exc.__cause__ from None
        raise


def group_of(rc: RefineConfig, target: str = TARGET) -> dict:
    """The `refine` group of a config for `rc`: `_target_` and every field (what `refine_config_from` reads)."""
    return {"_target_": target, **{f.name: getattr(rc, f.name) for f in fields(rc)}}


def describe_fields(official_keys: dict[str, str], width: int = 116) -> list[str]:
    """`--help` lines: each field with its default, its official key (if any), its doc and its choices."""
    choices = {name: f"one of {', '.join(values)}" for name, values in field_choices().items()}
    limits = {**choices, **_limits_in_words()}
    lines = []
    for f in fields(RefineConfig):
        alias = f"  [official: +{official_keys[f.name]}]" if f.name in official_keys else ""
        lines.append(f"  refine.{f.name} = {f.default!r}{alias}")
        doc = f.metadata["help"] + (f"; {limits[f.name]}" if f.name in limits else "")
        lines += textwrap.wrap(doc, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return lines


register_defaults()
