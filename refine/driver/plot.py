"""The run's PNG: rewards, losses and validation metrics per step (written at the end of `fit`)."""

from __future__ import annotations

import os
from pathlib import Path

PANELS = (
    ("NSP rewards", ("reward/cs_reward_mean", "reward/binary_reward_mean", "reward/hybrid_reward_mean")),
    # the cosine reward against its chance level (another prefix's ground truth): only the gap is learning
    ("cosine reward vs chance", ("reward/cs_reward_mean", "reward/cs_reward_chance_mean",
                                 "reward/cs_reward_above_chance_mean")),
    ("NTP loss (raw)", ("actor/ntp_loss_raw_ttt",)),
    ("PG loss (raw)", ("actor/pg_loss_raw_ttt",)),
    ("validation loss", ("val_loss",)),
    ("validation EM", ("val_em_score",)),
)


def plot_history(history: list[dict], path: str | Path) -> Path:
    """Plot each panel's metrics that appear in `history` (records with "step") against the step; returns path."""
    import matplotlib  # matplotlib (a second of import): only a finished run with refine.plot on draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the Agg backend is chosen

    fig, axes = plt.subplots(1, len(PANELS), figsize=(3.6 * len(PANELS), 3.2))
    for ax, (title, keys) in zip(axes, PANELS):
        for key in keys:
            points = [(r["step"], r[key]) for r in history if key in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` to `path` and close it, through a temporary file and a rename: an interrupted or failed write
    never leaves a 0-byte plot behind."""
    import matplotlib.pyplot as plt  # only to close the figure; the caller chose the backend

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path
