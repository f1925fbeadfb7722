"""The `refine:` config group, the official key aliases, and up-front validation (before Ray starts).

Every ReFINE knob lives in one documented group, `refine:` (the dataclass `RefineConfig` below). The official
ReFINE command lines add their keys to verl's groups with `+key=value` (spec §3); `apply_official_aliases`
moves each of them onto its `refine.*` name, so those command lines work unchanged. `validate_config` checks the
whole config and the data files and raises one `ValueError` naming the key/column, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

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
SAMPLING_MODES = ("entropy", "uniform", "argmax", "argmin")
REWARD_TYPES = ("cosine_similarity", "binary", "hybrid")
NSP_MODES = ("faithful", "fast")
MAX_RESPONSE_LENGTH = 20  # the hard-coded clamp margin of the official selection (spec Q16)


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
    an unknown field). An official key given together with a different explicit `refine.*` value is an error.
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


def _fail(key: str, value: Any, problem: str, fix: str) -> None:
    raise ValueError(f"{key}={value!r}: {problem}. Fix: {fix}")


def _required(rc: RefineConfig, names: list[str], why: str) -> None:
    for name in names:
        if getattr(rc, name) is None:
            official = next((k for k, v in OFFICIAL_ALIASES.items() if v == name), None)
            alt = f" (or the official +{official}=...)" if official else ""
            _fail(f"refine.{name}", None, f"missing, required when {why}", f"set refine.{name}=...{alt}")


def n_workers(config: DictConfig) -> int:
    """Data-parallel world size of the actor worker group."""
    return int(config.trainer.n_gpus_per_node) * int(config.trainer.nnodes)


def validate_refine(rc: RefineConfig, config: DictConfig) -> None:
    """Check the refine group against the rest of the config (spec §3 assertions, Q16, Q21, Q30)."""
    # (a val_only run with no flag is a plain evaluation by generation)
    if not any(getattr(rc, flag) for flag in PHASE_FLAGS) and not config.trainer.get("val_only", False):
        _fail(
            "refine.<phase flags>",
            {f: False for f in PHASE_FLAGS},
            "no phase is switched on, so there is nothing to run",
            "set e.g. refine.ttt_sft_update=True refine.ttt_ppo_update=True refine.val_get_loss=True (mid-training)",
        )
    if config.trainer.get("val_only", False) and not config.trainer.get("val_before_train", True):
        _fail("trainer.val_only", True, "val_only acts through the validation before training, which is off "
              "(the run would train instead)", "set trainer.val_before_train=True")
    if rc.task_sft_update and rc.task_ppo_update:
        _fail("refine.task_sft_update/task_ppo_update", (True, True), "exactly one outer update may be on",
              "switch one of them off")
    if rc.sampling not in SAMPLING_MODES:
        _fail("refine.sampling", rc.sampling, f"must be one of {SAMPLING_MODES}", "pick one of those")
    if rc.nsp_mode not in NSP_MODES:
        _fail("refine.nsp_mode", rc.nsp_mode, f"must be one of {NSP_MODES}", "use refine.nsp_mode=faithful")
    if rc.ntp_pad_mask not in ("model", "mask"):
        _fail("refine.ntp_pad_mask", rc.ntp_pad_mask, "must be 'model' or 'mask'", "pick one of those")
    if rc.ttt_reset not in ("cumulative", "batch"):
        _fail("refine.ttt_reset", rc.ttt_reset, "must be 'cumulative' or 'batch'", "pick one of those")
    if not isinstance(rc.max_consecutive_skips, int) or rc.max_consecutive_skips < 1:
        _fail("refine.max_consecutive_skips", rc.max_consecutive_skips, "must be an int >= 1", "use e.g. 3")
    for name in ("sft_coef", "ppo_coef", "temperature", "top_p"):
        value = getattr(rc, name)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            _fail(f"refine.{name}", value, "must be a finite number", "use a finite value")
    for key in ("actor_rollout_ref.actor.optim.lr", "actor_rollout_ref.actor.optim.weight_decay"):
        value = OmegaConf.select(config, key)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            _fail(key, value, "must be a finite number", "use a finite value")
    if rc.on_overlong not in ("truncate", "error"):
        _fail("refine.on_overlong", rc.on_overlong, "must be 'truncate' or 'error'", "pick one of those")

    w = n_workers(config)
    inner_train = rc.ttt_sft_update or rc.ttt_ppo_update
    inner_val = rc.val_ttt_sft_update or rc.val_ttt_ppo_update
    ppo = rc.ttt_ppo_update or rc.val_ttt_ppo_update
    if inner_train or inner_val:
        _required(rc, ["micro_batch_size_per_gpu", "log_prob_micro_batch_size_per_gpu"], "an inner loop is on")
    if rc.val_get_loss:
        _required(rc, ["log_prob_micro_batch_size_per_gpu"], "refine.val_get_loss is on")
    if ppo:
        _required(
            rc,
            ["n_chunks", "n_per_prefix", "response_length", "temperature", "reward", "sft_coef", "ppo_coef",
             "mini_batch_size"],
            "NSP-GRPO (ttt_ppo_update / val_ttt_ppo_update) is on",
        )
        if rc.reward not in REWARD_TYPES:
            _fail("refine.reward", rc.reward, f"must be one of {REWARD_TYPES}", "pick one of those")
        if not 1 <= rc.response_length <= MAX_RESPONSE_LENGTH:
            _fail("refine.response_length", rc.response_length,
                  f"k must be in [1, {MAX_RESPONSE_LENGTH}] (the selection clamps prefixes to S-20, spec Q16)",
                  f"use refine.response_length<={MAX_RESPONSE_LENGTH}")
        for name in ("n_chunks", "n_per_prefix", "mini_batch_size"):
            if getattr(rc, name) < 1:
                _fail(f"refine.{name}", getattr(rc, name), "must be >= 1", "use a positive value")
        if not rc.temperature > 0:
            _fail("refine.temperature", rc.temperature, "must be > 0", "use e.g. 1.0 (official)")
    for name in ("micro_batch_size_per_gpu", "log_prob_micro_batch_size_per_gpu"):
        value = getattr(rc, name)
        if value is not None and value < 1:
            _fail(f"refine.{name}", value, "must be >= 1", "use a positive value")

    def check_batch(key: str, batch: int, inner_ppo: bool) -> None:
        if batch % w:
            _fail(key, batch, f"not divisible by the number of workers ({w}, spec Q30)",
                  f"use a multiple of {w} (trainer.n_gpus_per_node x trainer.nnodes)")
        per_rank = batch // w
        lp = rc.log_prob_micro_batch_size_per_gpu
        if lp is not None and per_rank % min(lp, per_rank):
            _fail(key, batch, f"{per_rank} rows per worker are not divisible by the micro-batch "
                  f"refine.log_prob_micro_batch_size_per_gpu={lp} (spec Q30)",
                  "make the per-worker rows a multiple of the micro-batch")
        if inner_ppo:
            rows = per_rank * rc.n_chunks * rc.n_per_prefix
            if lp is not None and rows % min(lp, rows):
                _fail(key, batch, f"{rows} rollout rows per worker are not divisible by "
                      f"refine.log_prob_micro_batch_size_per_gpu={lp} (spec Q30)", "change the batch or micro-batch")
            if batch < rc.mini_batch_size:
                _fail(key, batch, f"smaller than refine.mini_batch_size={rc.mini_batch_size} (spec §3)",
                      f"use a batch >= {rc.mini_batch_size} or lower refine.mini_batch_size")
            # the worker's own update arithmetic (strict: no silently over/under-counted micro-batches, Q21)
            from refine.nsp.update_plan import normalized_ppo_mini_batch_rows, plan_combined_update

            try:
                m_rows = normalized_ppo_mini_batch_rows(rc.mini_batch_size, n_chunks=rc.n_chunks,
                                                        ttt_n=rc.n_per_prefix, world_size=w)
                plan_combined_update(per_rank, rows, ppo_mini_batch_rows=m_rows,
                                     micro_batch_size=rc.micro_batch_size_per_gpu, n_chunks=rc.n_chunks,
                                     ttt_n=rc.n_per_prefix, sft_loss_coef=rc.sft_coef, ppo_loss_coef=rc.ppo_coef)
            except ValueError as exc:
                _fail("refine.mini_batch_size", rc.mini_batch_size,
                      f"the per-worker update of {key}={batch} on {w} worker(s) does not divide evenly ({exc})",
                      "choose mini/micro-batch sizes that divide the per-worker rows (spec 2.C, Q21)")

    if rc.task_ppo_update:  # the upstream actor batch checks run only with task GRPO (spec §3, Q24 d)
        actor, n = config.actor_rollout_ref.actor, int(config.actor_rollout_ref.rollout.n)
        mini_rows, micro = int(actor.ppo_mini_batch_size) * n, int(actor.ppo_micro_batch_size_per_gpu)
        rows = int(config.data.train_batch_size) * n
        if mini_rows % w or (mini_rows // w) % micro or (rows // w) % max(1, mini_rows // w) or rows % w:
            _fail("actor_rollout_ref.actor.ppo_mini_batch_size", int(actor.ppo_mini_batch_size),
                  f"with rollout.n={n} on {w} worker(s) it must give a per-worker mini-batch that is a multiple of "
                  f"ppo_micro_batch_size_per_gpu={micro} and divides the {rows // w} rows per worker",
                  "choose ppo_mini_batch_size / ppo_micro_batch_size_per_gpu accordingly")

    batch = int(config.data.train_batch_size)
    if inner_train or rc.outer_enabled:
        check_batch("data.train_batch_size", batch, rc.ttt_ppo_update)
    val_batch = config.data.get("val_batch_size")
    if val_batch is not None and (inner_val or rc.val_get_loss):
        check_batch("data.val_batch_size", int(val_batch), rc.val_ttt_ppo_update)

    max_prompt = int(config.data.max_prompt_length)
    if ppo and max_prompt < 2 * MAX_RESPONSE_LENGTH + 1:
        _fail("data.max_prompt_length", max_prompt, "too short for NSP: prefixes are clamped to [start+20, S-20]",
              f"use data.max_prompt_length >= {2 * MAX_RESPONSE_LENGTH + 1}")
    if rc.nsp_mode == "fast":
        from refine.trainer.nsp_mode_checks import check_fast_mode

        check_fast_mode(rc, config)


# Phases whose driver code arrives with post-training / test-time training (issue 8). Refused up front so a run
# never starts Ray only to fail at its first step; remove entries here as they are implemented.
def validates_by_generation(rc: RefineConfig, config: DictConfig) -> bool:
    """Whether validation runs (before training, every test_freq steps, or val_only) in the generation mode."""
    trainer = config.trainer
    runs = trainer.get("val_before_train", True) or trainer.get("val_only", False) or int(trainer.test_freq) > 0
    return bool(runs) and not rc.val_get_loss


def check_generation_data(rc: RefineConfig, config: DictConfig) -> RefineConfig:
    """Answers and a scorable data source for validation by generation; answers for task SFT (spec 4.1, Q24).

    With no `refine.data_source_key`, the RULER / LongBench files' `task` column is used when every validation file
    has one (the official post-training demo left it unset and failed at validation, Q24 c). Returns `rc`, updated.
    """
    import pyarrow.parquet as pq

    generation = validates_by_generation(rc, config)
    if rc.task_sft_update and rc.answer_key is None:
        _fail("refine.answer_key", None, "task SFT needs the gold answers", "set refine.answer_key (or "
              "+data.answer_key=answer / answers, the RULER / LongBench column)")
    if rc.task_ppo_update:
        if rc.answer_key is None:
            _fail("refine.answer_key", None, "task GRPO scores rollouts against the gold answers",
                  "set refine.answer_key")
        if rc.data_source_key is None:
            if all("task" in pq.read_schema(path).names for path in _files(config.data.train_files)):
                rc = dataclasses.replace(rc, data_source_key="task")
            else:
                _fail("refine.data_source_key", None, "task GRPO picks the scorer by data source",
                      "set refine.data_source_key to the column naming the task (e.g. task)")
    if not generation:
        return rc
    if rc.answer_key is None:
        _fail("refine.answer_key", None, "validation by generation (refine.val_get_loss=False) scores against "
              "gold answers", "set refine.answer_key, or refine.val_get_loss=True for mid-training")
    val_files = _files(config.data.val_files)
    if rc.data_source_key is None:
        if all("task" in pq.read_schema(path).names for path in val_files):
            rc = dataclasses.replace(rc, data_source_key="task")
        else:
            _fail("refine.data_source_key", None, "validation by generation picks the scorer by data source",
                  "set refine.data_source_key to the column naming the task (e.g. task)")
    if rc.use_row_max_gen_tokens:
        for path in val_files:
            if "max_gen_tokens" not in pq.read_schema(path).names:
                _fail("refine.use_row_max_gen_tokens", True, f"{path} has no max_gen_tokens column",
                      "use it with the LongBench files, or set it to False")
    from refine.scoring.reward import DATA_SOURCES
    from refine.trainer.task_scorer import uses_refine_scorer

    if not uses_refine_scorer(config):
        return rc  # a custom reward function decides which data sources it knows
    for path in val_files:
        names = pq.read_schema(path).names
        if rc.data_source_key not in names:
            continue  # reported by validate_data
        sources = set(pq.read_table(path, columns=[rc.data_source_key]).column(0).to_pylist())
        unknown = sorted(str(x) for x in sources - set(DATA_SOURCES))
        if unknown:
            _fail(f"refine.data_source_key={rc.data_source_key!r} in {path}", unknown, "no scorer for these data "
                  "sources", f"use one of {sorted(DATA_SOURCES)}")
    return rc


def check_overlong(rc: RefineConfig, config: DictConfig, tokenizer) -> int:
    """Count prompts longer than max_prompt_length in the files a post-training / TTT phase reads (head
    truncation as officially, with a warning; a ValueError with `refine.on_overlong=error`). Returns the count."""
    import pyarrow.parquet as pq

    limit = int(config.data.max_prompt_length)
    files = []
    if rc.task_sft_update and not config.trainer.get("val_only", False):
        files += _files(config.data.train_files)
    if validates_by_generation(rc, config):
        files += _files(config.data.val_files)
    total = 0
    for path in files:
        texts = pq.read_table(path, columns=[config.data.prompt_key]).column(0).to_pylist()
        over = [row for row, text in enumerate(texts) if len(str(text).encode()) > limit
                and len(tokenizer(str(text), add_special_tokens=False)["input_ids"]) > limit]
        if over and rc.on_overlong == "error":
            _fail("data.max_prompt_length", limit, f"{len(over)} prompt(s) of {path} are longer (rows "
                  f"{over[:10]}{' ...' if len(over) > 10 else ''}) and refine.on_overlong=error",
                  "raise data.max_prompt_length, shorten the prompts, or use refine.on_overlong=truncate (official "
                  "head truncation)")
        if over:
            print(f"Warning: {len(over)} prompt(s) of {path} exceed data.max_prompt_length={limit}; their first "
                  f"{limit} tokens are kept (official head truncation; the question at the end is cut)")
        total += len(over)
    return total


def _check_parquet(key: str, path: str, column: str) -> int:
    """Rows of a readable, non-empty parquet file with `column`; ValueError naming key, path and fix otherwise."""
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        _fail(key, path, "file not found", "point it at an existing .parquet file")
    try:
        schema = pq.read_schema(path)
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:  # noqa: BLE001 - any read failure is the same user error
        _fail(key, path, f"unreadable as parquet ({type(exc).__name__}: {exc})", "give a valid parquet file")
    if column not in schema.names:
        _fail("data.prompt_key", column, f"column missing in {path} (columns: {schema.names})",
              "set data.prompt_key to one of those columns")
    if rows == 0:
        _fail(key, path, "the file has no rows", "give a non-empty data file")
    return rows


def _files(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def validate_data(rc: RefineConfig, config: DictConfig) -> None:
    """Check the data files: readable, non-empty, with the prompt (and answer / data_source) columns."""
    prompt_key = config.data.prompt_key
    need_train = not config.trainer.get("val_only", False)
    groups = [("data.val_files", config.data.val_files)]
    if need_train:
        groups.insert(0, ("data.train_files", config.data.train_files))
    for key, value in groups:
        files = _files(value)
        if not files:
            _fail(key, value, "no data file given", f"set {key}=path/to/file.parquet")
        for path in files:
            _check_parquet(key, path, prompt_key)
            import pyarrow.parquet as pq

            from refine.data.checks import check_prompts

            try:  # a column of ints or lists would otherwise fail inside Ray, or pass as "too short"
                check_prompts(pq.read_table(path, columns=[prompt_key]).column(0).to_pylist(), prompt_key=prompt_key)
            except ValueError as exc:
                _fail(f"{key} {path}", "rows", str(exc), "store one document string per row in that column")
            names = pq.read_schema(path).names
            for opt_key in ("answer_key", "data_source_key"):
                col = getattr(rc, opt_key)
                if col is not None and col not in names:
                    _fail(f"refine.{opt_key}", col, f"column missing in {path} (columns: {names})",
                          "name an existing column")
            if rc.answer_key is not None:
                from refine.data.checks import check_answers

                cells = pq.read_table(path, columns=[rc.answer_key]).column(0).to_pylist()
                try:
                    check_answers(cells, answer_key=rc.answer_key)
                except ValueError as exc:
                    _fail(f"refine.answer_key={rc.answer_key!r} in {path}", "cell", str(exc),
                          "store each row's answers as a list of strings")


def _max_token_chars(tokenizer) -> int:
    """Longest decoded token of the vocabulary: a text of n characters has at least n / this many tokens."""
    vocab = tokenizer.get_vocab()
    return max(len(tokenizer.convert_tokens_to_string([token])) for token in vocab) or 1


def check_nsp_row_lengths(rc: RefineConfig, config: DictConfig, tokenizer) -> None:
    """Every row of the files an NSP phase reads keeps >= 20 + k real tokens (and >= C) after truncation to
    max_prompt_length; otherwise position selection would fail mid-run. Only rows too short to be surely long
    enough by their character count are tokenised."""
    import pyarrow.parquet as pq

    groups = []
    if rc.ttt_ppo_update and not config.trainer.get("val_only", False):
        groups.append(("data.train_files", config.data.train_files))
    if rc.val_ttt_ppo_update:
        groups.append(("data.val_files", config.data.val_files))
    if not groups:
        return
    need = max(MAX_RESPONSE_LENGTH + rc.response_length, rc.n_chunks)
    if int(config.data.max_prompt_length) < need:
        _fail("data.max_prompt_length", int(config.data.max_prompt_length),
              f"rows need >= {need} real tokens for NSP (20 + k, and >= C)", f"use data.max_prompt_length >= {need}")
    # rows shorter than C * (20 + k) still run, but their first prefixes collapse onto the lower clamp
    full = rc.n_chunks * (MAX_RESPONSE_LENGTH + rc.response_length)
    chars = _max_token_chars(tokenizer)
    for key, value in groups:
        for path in _files(value):
            texts = pq.read_table(path, columns=[config.data.prompt_key]).column(0).to_pylist()
            collapsed = 0
            for row, text in enumerate(texts):
                if isinstance(text, str) and len(text) >= full * chars:
                    continue
                n = len(tokenizer(text or "", add_special_tokens=False)["input_ids"])
                if n < need:
                    _fail(key, path, f"row {row} of column {config.data.prompt_key!r} has {n} tokens; NSP needs "
                          f">= {need} (20 + refine.response_length, and >= refine.n_chunks)",
                          "drop or merge short rows (or lower refine.response_length / refine.n_chunks)")
                collapsed += min(n, int(config.data.max_prompt_length)) < full
            if collapsed:
                print(f"WARNING: {key}: {collapsed} of {len(texts)} rows of {path} have fewer than n_chunks * "
                      f"(20 + k) = {full} tokens, so some of their {rc.n_chunks} prefixes collapse onto the lower "
                      "clamp (20 real tokens); merge short rows or lower refine.n_chunks", flush=True)


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
    "validate_refine",
    "validate_data",
    "prepare_config",
    "n_workers",
]
