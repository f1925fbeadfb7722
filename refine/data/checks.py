"""Up-front checks of a raw-text table, run before any tokenisation or model work."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_columns(columns: Sequence[str], *, prompt_key: str, answer_key: str | None, data_source_key: str | None,
                  source: str = "data") -> None:
    """ValueError naming the missing column (prompt, answer or data-source) and the columns present."""
    present = list(columns)
    for role, key in (("prompt_key", prompt_key), ("answer_key", answer_key), ("data_source_key", data_source_key)):
        if key is not None and key not in present:
            raise ValueError(f"{role}={key!r}: column not found in {source}; columns are {present}")


def check_prompts(prompts: Sequence, *, prompt_key: str) -> None:
    """ValueError for a non-string or empty (whitespace-only) document, naming the column and row."""
    for row, text in enumerate(prompts):
        if not isinstance(text, str):
            raise ValueError(
                f"column {prompt_key!r} row {row}: expected a string, got {type(text).__name__} {text!r:.80}"
            )
        if not text.strip():
            raise ValueError(f"column {prompt_key!r} row {row}: empty document {text!r}")


def as_answer_list(cell, *, answer_key: str, row: int) -> list[str]:
    """A list-of-strings answers cell (list, tuple or the numpy array parquet gives) as a list.

    ValueError for anything else (a plain string would silently make its first *character* the SFT target, Q10)
    and for an empty list.
    """
    if isinstance(cell, np.ndarray):
        cell = cell.tolist()
    if not isinstance(cell, (list, tuple)):
        raise ValueError(
            f"column {answer_key!r} row {row}: expected a list of strings, got {type(cell).__name__} {cell!r:.80}"
        )
    if len(cell) == 0:
        raise ValueError(f"column {answer_key!r} row {row}: empty answer list")
    for answer in cell:
        if not isinstance(answer, str):
            raise ValueError(f"column {answer_key!r} row {row}: answer {answer!r:.80} is not a string")
    return list(cell)


def check_answers(cells: Sequence, *, answer_key: str) -> list[list[str]]:
    """Every answers cell as a list of strings (see `as_answer_list`)."""
    return [as_answer_list(cell, answer_key=answer_key, row=row) for row, cell in enumerate(cells)]
