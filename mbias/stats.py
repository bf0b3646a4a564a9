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


def bootstrap_diff(a: Sequence, b: Sequence, *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Difference of means (a - b) of two independent samples, with a percentile bootstrap interval."""
    va, _, _ = _clean(a, None)
    vb, _, _ = _clean(b, None)
    if len(va) == 0 or len(vb) == 0:
        return {"mean": None, "ci95": [None, None]}
    rng = np.random.default_rng(seed)
    da = va[rng.integers(0, len(va), size=(n_boot, len(va)))].mean(1)
    db = vb[rng.integers(0, len(vb), size=(n_boot, len(vb)))].mean(1)
    lo, hi = np.quantile(da - db, [0.025, 0.975])
    return {"mean": float(va.mean() - vb.mean()), "ci95": [float(lo), float(hi)]}


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
