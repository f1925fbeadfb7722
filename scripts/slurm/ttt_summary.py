"""The end-of-job table of scripts/slurm/testtimetrain.sbatch: per LongBench task its status, and for a task that
finished, the number of scored rows and the score (×100 mean, as scripts/longbench_report.py) read from the newest
`<run folder>/predictions/step_<N>.jsonl` written since the job started; the LongBench average of the scored tasks.

    python scripts/slurm/ttt_summary.py --since EPOCH_S TASK EXIT_CODE RUN_DIR [TASK EXIT_CODE RUN_DIR ...]

EXIT_CODE 75 is a task stopped by a signal (preemption, time limit), "-" one never started after it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refine.driver.preemption import PREEMPTED_EXIT_STATUS


# the launcher's codes for a task stopped by a signal (the trainer's PREEMPTED_EXIT_STATUS; its partial predictions
# are not scored) and for one never started after it
STOPPED = {str(PREEMPTED_EXIT_STATUS): "STOPPED (signal)", "-": "not run (stopped)"}


def newest_predictions(run_dir: Path, since: float) -> Path | None:
    files = [p for p in (run_dir / "predictions").glob("step_*.jsonl") if p.stat().st_mtime >= since]
    return max(files, key=lambda p: p.stat().st_mtime) if files else None


def read_scores(path: Path) -> list[float]:
    scores = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                scores.append(float(json.loads(line)["score"]))
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a prediction line with a score ({error})") from error
    return scores


def main(argv: list[str] | None = None) -> int:
    from refine.scoring.report import corpus_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--since", type=float, required=True, help="job start (seconds since the epoch)")
    parser.add_argument("results", nargs="+", help="TASK EXIT_CODE RUN_DIR, per task")
    args = parser.parse_args(argv)
    if len(args.results) % 3:
        parser.error(f"results come in threes (TASK EXIT_CODE RUN_DIR), got {len(args.results)} words")

    rows, tasks, scores = [], [], []
    for task, code, run_dir in zip(*[iter(args.results)] * 3):
        path = newest_predictions(Path(run_dir), args.since) if code == "0" else None
        if path is not None:
            values = read_scores(path)
            tasks += [task] * len(values)
            scores += values
        status = "ok" if code == "0" else STOPPED.get(code, f"FAILED (exit {code})")
        if code == "0" and path is None:
            status = "ok, no predictions"
        rows.append((task, status, path))
    report = corpus_report(tasks, scores)
    failed = sum(1 for _, status, _ in rows if status.startswith("FAILED"))
    ok = sum(1 for _, status, _ in rows if status.startswith("ok"))
    print(f"LongBench test-time training: {ok} of {len(rows)} task(s) ok, {failed} failed")
    print(f"{'task':<18} {'status':<20} {'n':>6} {'score':>8}  predictions")
    for task, status, path in rows:
        entry = report["tasks"].get(task)
        n, score = (f"{entry['n']}", f"{entry['score']:.2f}") if entry else ("-", "-")
        print(f"{task:<18} {status:<20} {n:>6} {score:>8}  {path or '-'}")
    if report["longbench_average"] is not None and len(report["longbench_tasks"]) > 1:
        print(f"{'LongBench avg':<18} {'':<20} {len(report['longbench_tasks']):>6} {report['longbench_average']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
