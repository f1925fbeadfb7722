"""How much a run prints: one short line per step by default; `REFINE_VERBOSE=1` brings back verl's per-step dump
of every metric, its start-up messages and the progress bars (the metrics file holds every metric either way)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading

VERBOSE_ENV = "REFINE_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def quiet_stdout():
    """Swallow what the stack prints to stdout inside (start-up chatter) unless verbose; if the block fails, what
    it printed is shown on stderr, since it may explain the failure."""
    if verbose():
        yield
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise


@contextlib.contextmanager
def quiet_progress_bars():
    """transformers' progress bars off inside (the weights' loading bar of a model of a few MB), unless verbose."""
    from transformers.utils import logging as hf_logging  # transformers: only the worker's model set-up needs it

    was_on = hf_logging.is_progress_bar_enabled()
    if not verbose():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


class _LineFilter(io.TextIOBase):
    """A stdout that drops the lines starting with any of `prefixes` and passes every other line on whole (print
    writes a line and its newline in two calls, so lines are gathered before they are judged)."""

    def __init__(self, stream, prefixes: tuple[str, ...]):
        self.stream, self.prefixes, self.pending = stream, prefixes, ""
        self.seen: list[str] = []  # the lines that passed, for `wait_for`
        self._lock = threading.Condition()

    def write(self, text: str) -> int:
        with self._lock:
            self.pending += text
            *lines, self.pending = self.pending.split("\n")
            kept = [line for line in lines if not line.startswith(self.prefixes)]
            self.stream.write("".join(f"{line}\n" for line in kept))
            self.seen += kept
            self._lock.notify_all()
        return len(text)

    def wait_for(self, needle: str, timeout: float) -> bool:
        """Wait until a line containing `needle` has passed (Ray forwards its workers' lines from a thread, later
        than they were printed); False after `timeout` seconds."""
        with self._lock:
            return self._lock.wait_for(lambda: any(needle in line for line in self.seen), timeout=timeout)

    def flush(self) -> None:
        undecided = any(p.startswith(self.pending) or self.pending.startswith(p) for p in self.prefixes)
        if self.pending and not undecided:  # a partial line that can be no dropped one: out now
            self.stream.write(self.pending)
            self.pending = ""
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")


@contextlib.contextmanager
def dropped_lines(*prefixes: str):
    """Drop stdout lines that start with `prefixes` inside (unless verbose); every other line, including what Ray
    forwards from its workers, passes unchanged. Yields the filter (`wait_for` a line)."""
    line_filter = _LineFilter(sys.stdout, () if verbose() else prefixes)
    try:
        with contextlib.redirect_stdout(line_filter):
            yield line_filter
    finally:
        if line_filter.pending and not line_filter.pending.startswith(prefixes):
            line_filter.stream.write(line_filter.pending)
