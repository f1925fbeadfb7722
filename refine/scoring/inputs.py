"""Argument checks shared by the scorers: bad input fails early with a ValueError naming it."""

from __future__ import annotations

from collections.abc import Sequence


def check_prediction(prediction: object, name: str = "prediction") -> str:
    """Return `prediction` if it is a str, else raise ValueError naming the argument and its type."""
    if not isinstance(prediction, str):
        raise ValueError(f"{name} must be a str, got {type(prediction).__name__}: {prediction!r:.80}")
    return prediction


def check_answers(answers: object, name: str = "answers") -> list[str]:
    """Return the gold answers as a new list of str (the caller's object is never mutated).

    Accepts a list or tuple of str, or a 1-D numpy array of str (what pandas reads from a parquet list column).
    A bare string is rejected: iterating it would score against single characters.
    """
    if isinstance(answers, (str, bytes)) or not _is_sequence(answers):
        raise ValueError(f"{name} must be a list of str, got {type(answers).__name__}: {answers!r:.80}")
    items = list(answers)
    for position, item in enumerate(items):
        if not isinstance(item, str):
            raise ValueError(f"{name}[{position}] must be a str, got {type(item).__name__}: {item!r:.80}")
    return items


def check_choice(value: object, choices: Sequence[str], name: str) -> str:
    """Return `value` if it is one of `choices`, else raise ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(choices)}")
    return value


def _is_sequence(value: object) -> bool:
    if isinstance(value, (list, tuple)):
        return True
    try:  # numpy is optional here: only parquet-loaded answers are arrays
        import numpy as np
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, np.ndarray) and value.ndim == 1
