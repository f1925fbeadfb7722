"""The one-line notice that the pure-PyTorch CPU kernels are in use (printed once per process, at first use)."""

from __future__ import annotations

import sys

BANNER = "[refine] fla CPU kernels active: pure-PyTorch stand-ins for fla's Triton ops (slow; for CPU tests/demos)."

_announced = False


def announce_once() -> None:
    """Print `BANNER` to stderr the first time any CPU kernel runs in this process."""
    global _announced
    if not _announced:
        _announced = True
        print(BANNER, file=sys.stderr, flush=True)
