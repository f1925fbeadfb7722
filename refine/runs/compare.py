"""Runs side by side: the list of runs under a folder, a table of several runs' figures, and one plot that overlays
the chosen metrics of every run (a panel per metric, a line per run)."""

from __future__ import annotations

from pathlib import Path

from refine.driver.plot import save_figure
from refine.runs.summary import KEY_METRICS, RunSummary


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _value(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def list_table(runs: list[RunSummary], root: Path | None = None) -> str:
    """One row per run (its folder, relative to `root` when under it): phase, steps, state, wall time, then the
    newest key figures it logged."""
    shown = [(label, key) for label, key in KEY_METRICS if any(key in run.last for run in runs)]
    header = ["run", "phase", "steps", "state", "wall", *[label for label, _ in shown]]
    rows = [[str(run.path.relative_to(root) if root and run.path.is_relative_to(root) and run.path != root
                 else run.path), run.phase, str(run.steps), run.state, _duration(run.wall_s),
             *[_value(run.last.get(key)) for _, key in shown]] for run in runs]
    return _table(header, rows)


def default_metrics(runs: list[RunSummary]) -> list[str]:
    """The key metrics that at least one of `runs` logged."""
    return [key for _, key in KEY_METRICS if any(key in run.last for run in runs)]


def compare_table(runs: list[RunSummary], metrics: list[str]) -> str:
    """A row per metric (its newest value in each run), plus phase, steps and state; a column per run."""
    header = ["", *[run.name for run in runs]]
    rows = [["phase", *[run.phase for run in runs]], ["steps", *[str(run.steps) for run in runs]],
            ["state", *[run.state for run in runs]], ["wall", *[_duration(run.wall_s) for run in runs]]]
    rows += [[metric, *[_value(run.last.get(metric)) for run in runs]] for metric in metrics]
    return _table(header, rows)


def compare_plot(runs: list[RunSummary], metrics: list[str], path: Path) -> Path:
    """One PNG: a panel per metric, each run's values against the step; written through a rename."""
    import matplotlib  # matplotlib: only a comparison draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the Agg backend is chosen

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.3), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for run in runs:
            points = [(r["step"], r[metric]) for r in run.history if isinstance(r.get(metric), (int, float))]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, label=run.name)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)
