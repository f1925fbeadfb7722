"""Checks of the data files a run reads (before Ray starts): readable parquet with the configured columns, text
cells that are strings, answers that are lists of strings, rows long enough for NSP, prompts that fit.

Each failure is one ValueError naming the key (or file, column, row), the value and the fix.
"""

from __future__ import annotations

import dataclasses
import os

from omegaconf import DictConfig

from refine.data.checks import check_answers, check_prompts
from refine.errors import config_error
from refine.nsp import positions
from refine.preflight.rules import validates_by_generation
from refine.preflight.schema import RefineConfig
from refine.scoring.reward import DATA_SOURCES
from refine.scoring.task_scorer import uses_refine_scorer


def check_overlong(rc: RefineConfig, config: DictConfig, tokenizer) -> int:
    """Count prompts longer than max_prompt_length in the files a post-training / TTT phase reads (head
    truncation as officially, with a warning; a ValueError with `refine.on_overlong=error`). Returns the count."""
    import pyarrow.parquet as pq  # pyarrow: kept off the import of the checks (`--help` stays fast)

    limit = int(config.data.max_prompt_length)
    files = []
    if rc.task_sft_update and not config.trainer.get("val_only", False):
        files += data_files(config.data.train_files)
    if validates_by_generation(rc, config):
        files += data_files(config.data.val_files)
    total = 0
    for path in files:
        texts = pq.read_table(path, columns=[config.data.prompt_key]).column(0).to_pylist()
        over = [row for row, text in enumerate(texts) if len(str(text).encode()) > limit
                and len(tokenizer(str(text), add_special_tokens=False)["input_ids"]) > limit]
        if over and rc.on_overlong == "error":
            config_error("data.max_prompt_length", limit, f"{len(over)} prompt(s) of {path} are longer (rows "
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
    import pyarrow.parquet as pq  # pyarrow: kept off the import of the checks

    if not os.path.isfile(path):
        config_error(key, path, "file not found", "point it at an existing .parquet file")
    try:
        schema = pq.read_schema(path)
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:  # noqa: BLE001 - any read failure is the same user error
        config_error(key, path, f"unreadable as parquet ({type(exc).__name__}: {exc})", "give a valid parquet file")
    if column not in schema.names:
        config_error("data.prompt_key", column, f"column missing in {path} (columns: {schema.names})",
              "set data.prompt_key to one of those columns")
    if rows == 0:
        config_error(key, path, "the file has no rows", "give a non-empty data file")
    return rows


def data_files(value) -> list[str]:
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
        files = data_files(value)
        if not files:
            config_error(key, value, "no data file given", f"set {key}=path/to/file.parquet")
        for path in files:
            _check_parquet(key, path, prompt_key)
            import pyarrow.parquet as pq  # pyarrow: kept off the import of the checks

            try:  # a column of ints or lists would otherwise fail inside Ray, or pass as "too short"
                check_prompts(pq.read_table(path, columns=[prompt_key]).column(0).to_pylist(), prompt_key=prompt_key)
            except ValueError as exc:
                config_error(f"{key} {path}", "rows", str(exc), "store one document string per row in that column")
            names = pq.read_schema(path).names
            for opt_key in ("answer_key", "data_source_key"):
                col = getattr(rc, opt_key)
                if col is not None and col not in names:
                    config_error(f"refine.{opt_key}", col, f"column missing in {path} (columns: {names})",
                          "name an existing column")
            if rc.answer_key is not None:
                cells = pq.read_table(path, columns=[rc.answer_key]).column(0).to_pylist()
                try:
                    check_answers(cells, answer_key=rc.answer_key)
                except ValueError as exc:
                    config_error(f"refine.answer_key={rc.answer_key!r} in {path}", "cell", str(exc),
                          "store each row's answers as a list of strings")


def _max_token_chars(tokenizer) -> int:
    """Longest decoded token of the vocabulary: a text of n characters has at least n / this many tokens."""
    vocab = tokenizer.get_vocab()
    return max(len(tokenizer.convert_tokens_to_string([token])) for token in vocab) or 1


def check_nsp_row_lengths(rc: RefineConfig, config: DictConfig, tokenizer) -> None:
    """Every row of the files an NSP phase reads keeps >= 20 + k real tokens (and >= C) after truncation to
    max_prompt_length; otherwise position selection would fail mid-run. Only rows too short to be surely long
    enough by their character count are tokenised."""
    import pyarrow.parquet as pq  # pyarrow: kept off the import of the checks

    groups = []
    if rc.ttt_ppo_update and not config.trainer.get("val_only", False):
        groups.append(("data.train_files", config.data.train_files))
    if rc.val_ttt_ppo_update:
        groups.append(("data.val_files", config.data.val_files))
    if not groups:
        return
    need = max(positions.CLAMP_MARGIN + rc.response_length, rc.n_chunks)
    if int(config.data.max_prompt_length) < need:
        config_error("data.max_prompt_length", int(config.data.max_prompt_length),
              f"rows need >= {need} real tokens for NSP (20 + k, and >= C)", f"use data.max_prompt_length >= {need}")
    # rows shorter than C * (20 + k) still run, but their first prefixes collapse onto the lower clamp
    full = rc.n_chunks * (positions.CLAMP_MARGIN + rc.response_length)
    chars = _max_token_chars(tokenizer)
    for key, value in groups:
        for path in data_files(value):
            texts = pq.read_table(path, columns=[config.data.prompt_key]).column(0).to_pylist()
            collapsed = 0
            for row, text in enumerate(texts):
                if isinstance(text, str) and len(text) >= full * chars:
                    continue
                n = len(tokenizer(text or "", add_special_tokens=False)["input_ids"])
                if n < need:
                    config_error(key, path, f"row {row} of column {config.data.prompt_key!r} has {n} tokens; NSP needs "
                          f">= {need} (20 + refine.response_length, and >= refine.n_chunks)",
                          "drop or merge short rows (or lower refine.response_length / refine.n_chunks)")
                collapsed += min(n, int(config.data.max_prompt_length)) < full
            if collapsed:
                print(f"WARNING: {key}: {collapsed} of {len(texts)} rows of {path} have fewer than n_chunks * "
                      f"(20 + k) = {full} tokens, so some of their {rc.n_chunks} prefixes collapse onto the lower "
                      "clamp (20 real tokens); merge short rows or lower refine.n_chunks", flush=True)


def check_generation_data(rc: RefineConfig, config: DictConfig) -> RefineConfig:
    """Answers and a scorable data source for validation by generation; answers for task SFT (spec 4.1, Q24).

    With no `refine.data_source_key`, the RULER / LongBench files' `task` column is used when every validation file
    has one (the official post-training demo left it unset and failed at validation, Q24 c). Returns `rc`, updated.
    """
    import pyarrow.parquet as pq  # pyarrow: kept off the import of the checks

    generation = validates_by_generation(rc, config)
    if rc.task_sft_update and rc.answer_key is None:
        config_error("refine.answer_key", None, "task SFT needs the gold answers", "set refine.answer_key (or "
              "+data.answer_key=answer / answers, the RULER / LongBench column)")
    if rc.task_ppo_update:
        if rc.answer_key is None:
            config_error("refine.answer_key", None, "task GRPO scores rollouts against the gold answers",
                  "set refine.answer_key")
        if rc.data_source_key is None:
            if all("task" in pq.read_schema(path).names for path in data_files(config.data.train_files)):
                rc = dataclasses.replace(rc, data_source_key="task")
            else:
                config_error("refine.data_source_key", None, "task GRPO picks the scorer by data source",
                      "set refine.data_source_key to the column naming the task (e.g. task)")
    if not generation:
        return rc
    if rc.answer_key is None:
        config_error("refine.answer_key", None, "validation by generation (refine.val_get_loss=False) scores against "
              "gold answers", "set refine.answer_key, or refine.val_get_loss=True for mid-training")
    val_files = data_files(config.data.val_files)
    if rc.data_source_key is None:
        if all("task" in pq.read_schema(path).names for path in val_files):
            rc = dataclasses.replace(rc, data_source_key="task")
        else:
            config_error("refine.data_source_key", None, "validation by generation picks the scorer by data source",
                  "set refine.data_source_key to the column naming the task (e.g. task)")
    if rc.use_row_max_gen_tokens:
        for path in val_files:
            if "max_gen_tokens" not in pq.read_schema(path).names:
                config_error("refine.use_row_max_gen_tokens", True, f"{path} has no max_gen_tokens column",
                      "use it with the LongBench files, or set it to False")
    if not uses_refine_scorer(config):
        return rc  # a custom reward function decides which data sources it knows
    for path in val_files:
        names = pq.read_schema(path).names
        if rc.data_source_key not in names:
            continue  # reported by validate_data
        sources = set(pq.read_table(path, columns=[rc.data_source_key]).column(0).to_pylist())
        unknown = sorted(str(x) for x in sources - set(DATA_SOURCES))
        if unknown:
            config_error(f"refine.data_source_key={rc.data_source_key!r} in {path}", unknown, "no scorer for these data "
                  "sources", f"use one of {sorted(DATA_SOURCES)}")
    return rc
