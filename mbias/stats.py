"""Means with bootstrap intervals. NumPy only, so reports can re-aggregate without torch.

When several questions share one image their outcomes are correlated; resampling images (clusters) rather than
questions keeps the interval honest. Missing values (None / NaN: e.g. a share that is undefined because both
contributions were zero) are dropped and counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

N_BOOT = 2000


def _clean(values: Sequence, groups: Sequence | None):
    vals = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    keep = ~np.isnan(vals)
    g = None if groups is None else np.asarray(list(groups), dtype=object)[keep]
    return vals[keep], g, int((~keep).sum())


def bootstrap_mean(values: Sequence, groups: Sequence | None = None, *, n_boot: int = N_BOOT, seed: int = 0,
                   level: float = 0.95) -> dict:
    """``{"mean", "ci95": [lo, hi], "n", "n_missing"}``; percentile bootstrap, clustered by ``groups``."""
    vals, g, missing = _clean(values, groups)
    n = len(vals)
    if n == 0:
        return {"mean": None, "ci95": [None, None], "n": 0, "n_missing": missing}
    mean = float(vals.mean())
    if n == 1:
        return {"mean": mean, "ci95": [mean, mean], "n": 1, "n_missing": missing}
    rng = np.random.default_rng(seed)
    if g is None:
        idx = rng.integers(0, n, size=(n_boot, n))
        boots = vals[idx].mean(axis=1)
    else:
        _, cluster = np.unique(g.astype(str), return_inverse=True)
        k = cluster.max() + 1
        sums = np.bincount(cluster, weights=vals, minlength=k)
        counts = np.bincount(cluster, minlength=k).astype(np.float64)
        pick = rng.integers(0, k, size=(n_boot, k))
        boots = sums[pick].sum(1) / counts[pick].sum(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return {"mean": mean, "ci95": [float(lo), float(hi)], "n": n, "n_missing": missing}


def bootstrap_diff(a: Sequence, b: Sequence, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """Difference of means (a - b) of two independent samples, with a percentile bootstrap interval."""
    va, _, _ = _clean(a, None)
    vb, _, _ = _clean(b, None)
    if len(va) == 0 or len(vb) == 0:
        return {"mean": None, "ci95": [None, None]}
    rng = np.random.default_rng(seed)
    da = va[rng.integers(0, len(va), size=(n_boot, len(va)))].mean(1)
    db = vb[rng.integers(0, len(vb), size=(n_boot, len(vb)))].mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(da - db, [alpha, 1 - alpha])
    return {"mean": float(va.mean() - vb.mean()), "ci95": [float(lo), float(hi)]}


def bootstrap_hierarchical(values: dict, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """Mean over runs of per-run means, with an interval from resampling runs, then values within each run
    (``values``: run -> array of per-example values). For results over seeds or builds, where both vary."""
    runs = sorted(k for k, v in values.items() if len(v))
    if not runs:
        return {"mean": None, "ci95": [None, None], "per_run": []}
    arrays = {k: np.asarray(values[k], dtype=np.float64) for k in runs}
    means = [arrays[k].mean() for k in runs]
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.choice(len(runs), size=len(runs))
        boots[b] = np.mean([arrays[runs[i]][rng.integers(0, len(arrays[runs[i]]), len(arrays[runs[i]]))].mean()
                            for i in picked])
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return {"mean": float(np.mean(means)), "ci95": [float(lo), float(hi)], "per_run": [float(m) for m in means]}


def ratio_share(num: Sequence, den: Sequence) -> float | None:
    """sum(num) / sum(den), or None when the denominator is zero."""
    d = float(np.nansum(np.asarray(den, dtype=np.float64)))
    return None if d == 0 or math.isnan(d) else float(np.nansum(np.asarray(num, dtype=np.float64)) / d)


def auc(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Trapezoidal area under ys(xs), normalised by the x range (so a flat curve at y has area y)."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    span = x[-1] - x[0]
    return float(np.trapezoid(y, x) / span) if span else float(y.mean())
