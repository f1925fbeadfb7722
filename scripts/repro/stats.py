"""The pre-registered analysis: paired differences of per-item 0/1 scores, with a two-level bootstrap 95 % interval.

For arms A (baseline) and B, d[s][i] = B[s][i] - A[s][i] for seed s and held-out item i (the same items for every
model; the same seed = the same documents in the same order for both arms). The estimate is the mean of d; the
interval resamples seeds and items with replacement (both levels, `n_boot` times, fixed generator seed, so the
report is reproducible) and takes the 2.5 and 97.5 percentiles of the resampled means. A baseline with one model
for all seeds (the pre-trained checkpoint) is repeated across seeds.
"""

from __future__ import annotations

import numpy as np


def bits(strings: list[str]) -> np.ndarray:
    """[seeds, items] 0/1 array from one '0'/'1' string per seed."""
    if len({len(s) for s in strings}) != 1:
        raise ValueError(f"item counts differ between seeds: {[len(s) for s in strings]}")
    return np.array([[c == "1" for c in s] for s in strings], dtype=float)


def paired_difference(baseline: list[str], arm: list[str], n_boot: int, seed: int = 0) -> dict:
    """Mean of arm - baseline (x100: percentage points) with its bootstrap 95 % interval, over seeds x items."""
    a, b = bits(baseline), bits(arm)
    if a.shape[0] == 1 and b.shape[0] > 1:
        a = np.repeat(a, b.shape[0], axis=0)
    if a.shape != b.shape:
        raise ValueError(f"unpaired shapes {a.shape} and {b.shape}")
    d = 100 * (b - a)
    rng = np.random.default_rng(seed)
    n_seeds, n_items = d.shape
    means = np.empty(n_boot)
    for r in range(n_boot):
        s = rng.integers(0, n_seeds, n_seeds)
        i = rng.integers(0, n_items, n_items)
        means[r] = d[np.ix_(s, i)].mean()
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "seeds": n_seeds, "items": n_items,
            "baseline": float(100 * a.mean()), "arm": float(100 * b.mean())}


def verdict(result: dict) -> str:
    """'held' (interval above 0), 'reversed' (below 0) or 'null' (interval contains 0)."""
    return "held" if result["lo"] > 0 else "reversed" if result["hi"] < 0 else "null"


def seed_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, lo, hi) of per-seed values with a t-based 95 % interval (secondary measures: one number per seed)."""
    from statistics import fmean, stdev

    t95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}
    m = fmean(values)
    if len(values) < 2:
        return m, float("nan"), float("nan")
    half = t95.get(len(values) - 1, 2.0) * stdev(values) / len(values) ** 0.5
    return m, m - half, m + half
