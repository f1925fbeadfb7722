"""Raw-text dataset for long documents and QA prompts: the official `TTTRLHFDataset` behaviour (spec 4.1, Q8-Q10).

Per row: the prompt column tokenised as raw text (no chat template, `add_special_tokens=False`, so no BOS), the
head kept when longer than `max_prompt_length` (counted and warned), left-padded to exactly `max_prompt_length`
with pad = EOS when the tokenizer has no pad token. With `answer_key`: the answers list joined with "|" as the
non-tensor `answers`, and the first answer tokenised, truncated and right-padded to `max_response_length`
(`ground_truth_ids`, `ground_truth_attention_mask`, used by task SFT). With `data_source_key`: that column as the
non-tensor `data_source`. Items are dicts for verl's `collate_fn`.

Deliberate difference: `filter_overlong=True` really counts tokens (the official filter measured the length of
the tokenizer's output dict and never filtered, Q8); it stays off by default, as officially.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from refine.data.checks import check_answers, check_columns, check_prompts
from refine.scoring.answers import join_answers

logger = logging.getLogger(__name__)


def read_table(path: str | Path):
    """A pandas DataFrame from a parquet, json (array or records) or jsonl file."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True)
    if suffix == ".json":
        try:
            return pd.read_json(path)
        except ValueError:
            return pd.read_json(path, lines=True)
    raise ValueError(f"data_files: unsupported file type {path.name!r} (expected .parquet, .json or .jsonl)")


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1; got {value!r}")
    return value


class RawTextDataset(Dataset):
    """Official `TTTRLHFDataset` behaviour as a plain `torch.utils.data.Dataset` (see the module docstring).

    Args:
        data_files: one path or a list of paths (parquet / json / jsonl), concatenated in order.
        tokenizer: a Hugging Face tokenizer (called with `add_special_tokens=False`).
        prompt_key: column holding the raw text.
        answer_key: optional column holding a list of answer strings.
        data_source_key: optional column returned as `data_source`.
        max_prompt_length: S, the exact length of `input_ids` (required).
        max_response_length: R, the length of `ground_truth_ids` (needed with `answer_key`).
        filter_overlong: drop rows whose prompt has more than S tokens (tokenises every row once at start).
        pad_token_id: defaults to the tokenizer's pad id, else its EOS id.

    Raises ValueError, before any tokenisation, for a missing column, a non-string or empty document, or an
    answers cell that is not a non-empty list of strings.
    """

    def __init__(
        self,
        data_files: str | Path | Sequence[str | Path],
        tokenizer,
        prompt_key: str = "prompt",
        answer_key: str | None = None,
        data_source_key: str | None = None,
        max_prompt_length: int | None = None,
        max_response_length: int | None = None,
        filter_overlong: bool = False,
        pad_token_id: int | None = None,
    ):
        import pandas as pd

        self.tokenizer = tokenizer
        self.prompt_key = prompt_key
        self.answer_key = answer_key
        self.data_source_key = data_source_key
        self.max_prompt_length = _positive_int("max_prompt_length", max_prompt_length)
        if answer_key is not None:
            self.max_response_length = _positive_int("max_response_length", max_response_length)
        else:
            self.max_response_length = max_response_length
        if pad_token_id is None:
            pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_token_id is None:
            raise ValueError("pad_token_id: the tokenizer has neither a pad nor an EOS token; pass pad_token_id")
        self.pad_token_id = int(pad_token_id)

        files = [data_files] if isinstance(data_files, (str, Path)) else list(data_files)
        if not files:
            raise ValueError("data_files is empty")
        frames = []
        for path in files:
            frame = read_table(path)
            check_columns(frame.columns, prompt_key=prompt_key, answer_key=answer_key,
                          data_source_key=data_source_key, source=str(path))
            frames.append(frame)
        table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        if len(table) == 0:
            raise ValueError(f"data_files {[str(f) for f in files]} hold no rows")

        self.prompts: list[str] = table[prompt_key].tolist()
        check_prompts(self.prompts, prompt_key=prompt_key)
        self.answers = check_answers(table[answer_key].tolist(), answer_key=answer_key) if answer_key else None
        self.data_sources = table[data_source_key].tolist() if data_source_key else None
        self.truncated_count = 0
        self.rows = list(range(len(self.prompts)))
        if filter_overlong:
            self.rows = [i for i in self.rows if len(self._encode(self.prompts[i])) <= self.max_prompt_length]
            logger.info("filter_overlong: kept %d of %d rows", len(self.rows), len(self.prompts))
            if not self.rows:
                raise ValueError(f"filter_overlong: no row fits max_prompt_length={self.max_prompt_length}")

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __len__(self) -> int:
        return len(self.rows)

    def _note_truncation(self, row: int, n_tokens: int) -> None:
        self.truncated_count += 1
        count = self.truncated_count
        if count & (count - 1) == 0:  # warn at 1, 2, 4, 8, ... truncations: visible but not flooding
            logger.warning(
                "row %d has %d tokens > max_prompt_length=%d: keeping the first %d (the end is cut; %d rows so far)",
                row, n_tokens, self.max_prompt_length, self.max_prompt_length, count,
            )

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        ids = self._encode(self.prompts[row])
        if not ids:
            raise ValueError(f"column {self.prompt_key!r} row {row}: the document tokenises to no tokens")
        if len(ids) > self.max_prompt_length:
            self._note_truncation(row, len(ids))
            ids = ids[: self.max_prompt_length]
        n_pad = self.max_prompt_length - len(ids)
        item = {
            "input_ids": torch.tensor([self.pad_token_id] * n_pad + ids, dtype=torch.long),
            "attention_mask": torch.tensor([0] * n_pad + [1] * len(ids), dtype=torch.long),
        }
        if self.answers is not None:
            answers = self.answers[row]
            item["answers"] = join_answers(answers)  # the official "|" round trip (Q10)
            target = self._encode(answers[0])[: self.max_response_length]
            n_pad = self.max_response_length - len(target)
            item["ground_truth_ids"] = torch.tensor(target + [self.pad_token_id] * n_pad, dtype=torch.long)
            item["ground_truth_attention_mask"] = torch.tensor([1] * len(target) + [0] * n_pad, dtype=torch.long)
        if self.data_sources is not None:
            item["data_source"] = self.data_sources[row]
        return item
