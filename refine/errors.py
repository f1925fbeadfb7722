"""The one shape of a configuration error: one line naming the key (or file / column / row), the value, the problem
and the fix. Raised before Ray starts; `python -m refine.main` prints it as `refine: configuration error: ...`."""

from __future__ import annotations

from typing import Any, NoReturn


def config_error(key: str, value: Any, problem: str, fix: str) -> NoReturn:
    raise ValueError(f"{key}={value!r}: {problem}. Fix: {fix}")
