"""Corpus-level report: per-task mean ×100 with its sample count, and the LongBench average.

Per-sample scores stay unrounded floats in 0..1; like upstream LongBench, only the ×100 aggregate is rounded
(2 decimals). The LongBench average is the mean of the per-task means over the LongBench tasks present
(computed from the unrounded means, then rounded).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from refine.scoring import longbench
from refine.scoring.inputs import check_answers, check_prediction
from refine.scoring.reward import score_response


def scored_count(num_rows: int, batch_size: int | None) -> int:
    """Rows the official validation loader scores: `drop_last=True` keeps full batches only (Q11).

    `batch_size=None` means one batch holding everything (verl's val_batch_size=null).
    """
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    if batch_size is None:
        return num_rows
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return (num_rows // batch_size) * batch_size


def score_rows(
    tasks: Sequence[str],
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    scorer: Callable[[str, str, list[str]], float] = score_response,
) -> list[float]:
    """Per-row scores `scorer(task, prediction, answers)` (default: the reward dispatcher)."""
    if not (len(tasks) == len(predictions) == len(answers)):
        raise ValueError(
            f"tasks, predictions and answers must have the same length, got {len(tasks)}, {len(predictions)}, "
            f"{len(answers)}"
        )
    return [
        scorer(task, check_prediction(prediction), check_answers(gold))
        for task, prediction, gold in zip(tasks, predictions, answers)
    ]


def corpus_report(tasks: Iterable[str], scores: Iterable[float]) -> dict:
    """Aggregate per-row (task, score in 0..1) pairs into a report dict.

    Keys: "tasks" {task: {"n", "score"}} with score = 100 × the mean rounded to 2 decimals; "average" over all tasks
    and "longbench_average" over the LongBench tasks present (means of the unrounded task means; None when there
    are none); "longbench_tasks".
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for task, value in zip(tasks, scores, strict=True):
        value = float(value)
        if not (0.0 <= value <= 1.0) or math.isnan(value):
            raise ValueError(f"score for task {task!r} must be in [0, 1], got {value}")
        sums[task] = sums.get(task, 0.0) + value
        counts[task] = counts.get(task, 0) + 1
    means = {task: sums[task] / counts[task] for task in sorted(sums)}
    longbench_means = [mean for task, mean in means.items() if task in longbench.TASKS]
    return {
        "tasks": {task: {"n": counts[task], "score": round(100 * mean, 2)} for task, mean in means.items()},
        "average": _average(list(means.values())),
        "longbench_average": _average(longbench_means),
        "longbench_tasks": [task for task in means if task in longbench.TASKS],
    }


def _average(means: list[float]) -> float | None:
    return round(100 * sum(means) / len(means), 2) if means else None


def format_report(report: dict) -> str:
    """The report as a plain-text table (task, n, score), LongBench average last."""
    lines = [f"{'task':<18} {'n':>6} {'score':>8}"]
    for task, entry in report["tasks"].items():
        lines.append(f"{task:<18} {entry['n']:>6} {entry['score']:>8.2f}")
    if report.get("average") is not None and len(report["tasks"]) > 1:
        lines.append(f"{'average':<18} {len(report['tasks']):>6} {report['average']:>8.2f}")
    if report.get("longbench_average") is not None:
        lines.append(f"{'LongBench avg':<18} {len(report['longbench_tasks']):>6} {report['longbench_average']:>8.2f}")
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> Path:
    """Write the report as JSON (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path
