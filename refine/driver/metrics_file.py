"""The run folder's `metrics.jsonl`, written whatever `trainer.logger` says: one line {"step", "data"} per log call
(verl's file-logger format), every metric.

A resumed run keeps the lines of the steps up to its checkpoint and drops the later ones (they are trained again),
so the file, and the plot drawn from it, always holds every step of the run once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from refine.files import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"


def _plain(value):
    """A JSON-safe scalar (numpy and torch scalars as Python numbers; nan/inf as strings JSON can hold)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_records(path: Path, up_to_step: int | None = None) -> list[dict]:
    """Records {step, data} of a metrics.jsonl (those with step <= up_to_step when given); [] when missing."""
    if not Path(path).exists():
        return []
    records = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a kill: the steps after the checkpoint are trained again
            continue
        if up_to_step is None or record["step"] <= up_to_step:
            records.append(record)
    return records


class MetricsFile:
    """Appends one line per log call; opened for a run resumed at `resume_step` (0: a fresh run, file emptied)."""

    def __init__(self, path: Path, resume_step: int):
        self.path = Path(path)
        self.kept = read_records(self.path, up_to_step=resume_step) if resume_step > 0 else []
        text = "".join(json.dumps(record) + "\n" for record in self.kept)
        atomic_write_bytes(self.path, text.encode())
        self._handle = open(self.path, "a", buffering=1)  # line-buffered: a killed run loses at most one line

    def log(self, data: dict, step: int) -> None:
        record = {"step": step, "data": {k: _plain(v) for k, v in data.items()}}
        self._handle.write(json.dumps(record, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)) + "\n")

    def close(self) -> None:
        self._handle.close()
