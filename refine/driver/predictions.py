"""Per-example predictions of every validation by generation (post-training, test-time training), one JSON line per
example, written as they are scored (an interrupted run keeps what it answered).

Files: `<run dir>/predictions/step_<N>.jsonl`, and verl's `trainer.validation_data_dir/<N>.jsonl` when that is
set. Columns: step, index (row of the validation file, loader order), data_source, prompt_tail (last 300
characters of the prompt), prediction, answers, score; `scripts/longbench_report.py --predictions FILE` reads
them directly. `trainer.log_val_generations = n` also prints the first n examples.
"""

from __future__ import annotations

import json
from pathlib import Path

PROMPT_TAIL_CHARS = 300


def prediction_paths(run_dir: Path, step: int, validation_data_dir: str | None) -> list[Path]:
    paths = [Path(run_dir) / "predictions" / f"step_{step}.jsonl"]
    if validation_data_dir:
        paths.append(Path(validation_data_dir) / f"{step}.jsonl")
    return paths


class PredictionWriter:
    """Appends one line per example to every path (created fresh for this step), flushing each line."""

    def __init__(self, paths: list[Path], *, step: int, show: int = 0):
        self.paths, self.step, self.show, self.count = paths, step, show, 0
        self.handles = []
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handles.append(open(path, "w", encoding="utf-8"))

    def write(self, *, data_source: str, prompt: str, prediction: str, answers: list[str], score: float) -> None:
        record = {"step": self.step, "index": self.count, "data_source": data_source,
                  "prompt_tail": prompt[-PROMPT_TAIL_CHARS:], "prediction": prediction, "answers": list(answers),
                  "score": score}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        for handle in self.handles:
            handle.write(line)
            handle.flush()
        if self.count < self.show:
            print(f"[val step {self.step} #{self.count}] {data_source} score={score:.3f}\n  prompt: ...{prompt[-200:]!r}"
                  f"\n  prediction: {prediction!r}\n  answers: {answers}", flush=True)
        self.count += 1

    def close(self) -> None:
        for handle in self.handles:
            handle.close()
