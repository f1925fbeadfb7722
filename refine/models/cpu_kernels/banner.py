"""The one-line notice that the pure-PyTorch CPU kernels are in use (printed once per process, at first use)."""

from __future__ import annotations

import sys

BANNER = "[refine] fla CPU kernels active: pure-PyTorch stand-ins for fla's Triton ops (slow; for CPU tests/demos)."

_announced: set[str] = set()


def announce_once(text: str = BANNER) -> None:
    """Print `text` (by default the stand-ins' `BANNER`) to stderr the first time it is announced in this process."""
    if text not in _announced:
        _announced.add(text)
        print(text, file=sys.stderr, flush=True)
