"""Corpus report for LongBench / RULER predictions: per task ×100 mean with n, the LongBench average; table + JSON.

    # predictions: JSON lines or parquet with columns task (or data_source), prediction, answers (or answer)
    python scripts/longbench_report.py --predictions preds.jsonl --out report.json
    # sanity check on the shipped files: the first gold answer as the prediction
    python scripts/longbench_report.py --gold-as-prediction --out gold_report.json
    # as the official validation scores them: batches of 8 with drop_last, answers through the "|" round trip
    python scripts/longbench_report.py --gold-as-prediction --val-batch-size 8 --round-trip

`--mode longbench` scores LongBench tasks with upstream LongBench's rules instead of the official ReFINE ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def load_predictions(path: Path):
    """Rows with columns task, prediction, answers (accepting data_source / answer as the other spellings)."""
    import pandas as pd

    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True)
    for name, other in (("task", "data_source"), ("answers", "answer")):
        if other in frame.columns:
            frame[name] = frame[name].fillna(frame[other]) if name in frame.columns else frame[other]
            frame = frame.drop(columns=other)
    missing = [c for c in ("task", "prediction", "answers") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; have {list(frame.columns)}")
    return frame


def gold_rows(data_dir: Path, val_batch_size: int | None):
    """Every shipped LongBench file with its first gold answer as the prediction (optionally drop_last-truncated)."""
    import pandas as pd

    from refine.scoring.report import scored_count

    frames = []
    for path in sorted(data_dir.glob("*.parquet")):
        frame = pd.read_parquet(path, columns=["task", "answers"])
        frame = frame.head(scored_count(len(frame), val_batch_size))
        frames.append(frame.assign(prediction=[a[0] if len(a) else "" for a in frame["answers"]]))
    if not frames:
        raise ValueError(f"no parquet files in {data_dir}")
    return pd.concat(frames, ignore_index=True)


def main(argv: list[str] | None = None) -> dict:
    from refine.scoring import longbench
    from refine.scoring.answers import round_trip
    from refine.scoring.inputs import check_answers
    from refine.scoring.paths import LONGBENCH_DIR
    from refine.scoring.report import corpus_report, format_report, scored_count, write_report
    from refine.scoring.reward import score_response

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", type=Path, help="JSON lines or parquet of predictions")
    source.add_argument("--gold-as-prediction", action="store_true", help="score the shipped gold answers")
    parser.add_argument("--data-dir", type=Path, default=LONGBENCH_DIR, help="for --gold-as-prediction")
    parser.add_argument("--mode", choices=longbench.MODES, default="refine")
    parser.add_argument("--round-trip", action="store_true", help='apply the official "|" join/split to answers')
    parser.add_argument("--val-batch-size", type=int, default=None,
                        help="keep only full batches per task, as the official drop_last validation loader does")
    parser.add_argument("--out", type=Path, default=None, help="report JSON path")
    args = parser.parse_args(argv)

    if args.gold_as_prediction:
        frame = gold_rows(args.data_dir, args.val_batch_size)
    else:
        frame = load_predictions(args.predictions)
        groups = frame.groupby("task", sort=False)
        allowed = groups["task"].transform("size").map(lambda n: scored_count(n, args.val_batch_size))
        frame = frame[groups.cumcount() < allowed]  # the first full batches of each task
    scores = []
    for task, prediction, answers in zip(frame["task"], frame["prediction"], frame["answers"]):
        answers = check_answers(answers)
        if args.round_trip:
            answers = round_trip(answers)
        if args.mode == "longbench" and task in longbench.TASKS:
            scores.append(longbench.score(prediction, answers, task, mode="longbench"))
        else:
            scores.append(score_response(task, prediction, answers))
    report = corpus_report(list(frame["task"]), scores)
    report["settings"] = {"mode": args.mode, "round_trip": args.round_trip, "val_batch_size": args.val_batch_size,
                          "source": "gold" if args.gold_as_prediction else str(args.predictions)}  # fmt: skip
    print(format_report(report))
    if args.out:
        write_report(report, args.out)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
