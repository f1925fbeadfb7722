"""`python -m refine.runs [FOLDER]` lists the runs under FOLDER (default `runs`); `python -m refine.runs compare
RUN RUN ... [--metrics KEY ...] [--out FILE.png]` prints their figures side by side and writes one overlaid plot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from refine.runs.compare import compare_plot, compare_table, default_metrics, list_table
from refine.runs.summary import find_runs, is_run, summarize


def _fail(message: str) -> None:
    print(f"refine.runs: {message}", file=sys.stderr)
    sys.exit(2)


def _list(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m refine.runs", description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="runs", help="where to look for run folders (default: runs)")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        _fail(f"{folder}: no such folder. Fix: give the folder that holds your runs (trainer.default_local_dir's "
              "parent, e.g. runs/refine or checkpoints/ReFINE)")
    runs = [summarize(path) for path in find_runs(folder)]
    if not runs:
        _fail(f"{folder}: holds no run folder (none with resolved_config.yaml, run_state.json or metrics.jsonl)")
    print(list_table(runs, folder))


def _compare(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m refine.runs compare", description="runs side by side")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--metrics", nargs="+", default=None, help="metric keys (default: the key figures logged)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the plot (default: compare_<run>_<run>....png beside the first run)")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.runs if not is_run(path)]
    if missing:
        _fail(f"{', '.join(missing)}: not a run folder (no resolved_config.yaml, run_state.json or metrics.jsonl). "
              "Fix: give run folders; `python -m refine.runs FOLDER` lists them")
    runs = [summarize(path) for path in args.runs]
    metrics = args.metrics or default_metrics(runs)
    if not metrics:
        _fail("none of these runs logged a metric yet")
    unknown = [m for m in metrics if not any(m in run.last for run in runs)]
    if unknown:
        _fail(f"--metrics {' '.join(unknown)}: logged by none of these runs. Fix: use keys of their metrics.jsonl")
    print(compare_table(runs, metrics))
    out = args.out or runs[0].path.parent / f"compare_{'_'.join(run.name for run in runs)}.png"
    print(f"plot: {compare_plot(runs, metrics, out)}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        _compare(argv[1:])
    else:
        _list(argv)


if __name__ == "__main__":
    main()
