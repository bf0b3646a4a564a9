"""Means with bootstrap intervals, and differences over builds with an interval, "k of n" and a sign test. NumPy
only, so reports can re-aggregate without torch.

When several questions share one image their outcomes are correlated; resampling images (clusters) rather than
questions keeps the interval honest. Missing values (None / NaN: e.g. a share that is undefined because both
contributions were zero) are dropped and counted.

A difference between recipes over a handful of builds is another matter: the builds, not the examples, carry the
spread, and a bootstrap over three to ten builds is too narrow (``across_builds``; docs/methods.md, "Intervals over
builds"; the coverage is measured by benchmarks/coverage.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np

N_BOOT = 2000
BOOTSTRAP_T_MIN_BUILDS = 10  # across_builds: below this, t alone (bootstrap-t's ends are erratic over few builds)


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


def across_builds(values: Mapping | Sequence, *, level: float = 0.95, n_boot: int = N_BOOT, n_flips: int = 2**16,
                  seed: int = 0) -> dict:
    """A difference over builds: the mean of the per-build differences with an interval over builds, how many
    builds it is positive on, and two exact tests of "no difference" beside the interval.

    ``values``: run -> per-example paired differences (each run reduced to its mean, as in
    ``bootstrap_hierarchical``), or one difference per build. Returns ``{"mean", "ci95": [lo, hi] (at ``level``),
    "ci_t", "ci_bootstrap_t", "n_builds", "k_positive", "k_negative", "p_sign", "p_flip", "sd", "per_build",
    "method"}``:

    - ``ci95``: the wider of two intervals over builds (the lower of the two lower ends, the higher of the two upper
      ends): Student's t (``ci_t``: mean +/- t(level, n-1) sd / sqrt(n)) and, from ``BOOTSTRAP_T_MIN_BUILDS``
      builds on, the studentized bootstrap (``ci_bootstrap_t``, ``n_boot`` resamples of the builds). t alone
      undercovers when a few builds differ a lot from the rest (plain training collapsing on a quarter of the
      builds: 92% at ten builds), where bootstrap-t, which follows the skew, does not; over fewer builds
      bootstrap-t's ends are erratic (over three builds it has 10 distinct resamples; over six, one outlying build
      put an end 67 points beyond every value), so t alone is used there. Measured coverage:
      benchmarks/results/coverage.md; the reasoning: docs/methods.md, "Intervals over builds". It needs at least
      two builds (``[None, None]`` otherwise).
    - ``k_positive`` / ``k_negative``: builds whose difference is above / below 0 ("k of n builds").
    - ``p_sign``: exact two-sided sign test (builds with a difference of exactly 0 are left out), which assumes
      nothing about the shape of the differences; with n builds it cannot go below 2 / 2**n (0.25 at three).
    - ``p_flip``: two-sided sign-flip permutation p-value of the mean (exact up to 16 builds, ``n_flips`` random
      flips beyond), which assumes the differences are symmetric about 0 under "no difference".
    """
    if isinstance(values, Mapping):
        per_build = [float(np.mean(np.asarray(values[k], dtype=np.float64)))
                     for k in sorted(values, key=str) if len(values[k])]
    else:
        per_build = [float(v) for v in values]
    d = np.array([v for v in per_build if not math.isnan(v)], dtype=np.float64)
    n = len(d)
    out = {"mean": None, "ci95": [None, None], "ci_t": [None, None], "ci_bootstrap_t": [None, None],
           "n_builds": n, "k_positive": int((d > 0).sum()), "k_negative": int((d < 0).sum()), "p_sign": None,
           "p_flip": None, "sd": None, "per_build": per_build,
           "method": f"the wider of the t and (from {BOOTSTRAP_T_MIN_BUILDS} builds) bootstrap-t intervals over "
                     f"builds ({level:.0%}), exact sign test, sign-flip permutation test"}
    if n == 0:
        return out
    out["mean"] = float(d.mean())
    out["p_sign"] = sign_test(out["k_positive"], out["k_negative"])
    out["p_flip"] = sign_flip_p(d, n_flips=n_flips, seed=seed)
    if n >= 2:
        sd = float(d.std(ddof=1))
        half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
        out["sd"], out["ci_t"] = sd, [out["mean"] - half, out["mean"] + half]
        out["ci95"] = list(out["ci_t"])
        if n >= BOOTSTRAP_T_MIN_BUILDS:
            out["ci_bootstrap_t"] = bootstrap_t(d, level=level, n_boot=n_boot, seed=seed)
            out["ci95"] = [min(out["ci_t"][0], out["ci_bootstrap_t"][0]),
                           max(out["ci_t"][1], out["ci_bootstrap_t"][1])]
    return out


def bootstrap_t(values: Sequence[float], *, level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> list[float]:
    """Studentized (bootstrap-t) interval for the mean: the quantiles of (resampled mean - mean) / resampled
    standard error, applied to the sample's own standard error. Resamples whose values are all equal (no standard
    error) are left out; with fewer than two values, or all equal, the interval is the mean alone."""
    d = np.asarray(values, dtype=np.float64)
    n = len(d)
    mean = float(d.mean())
    # all equal: no spread (a float std of equal values is not always exactly 0, so ptp decides)
    if n < 2 or np.ptp(d) == 0:
        return [mean, mean]
    se = float(d.std(ddof=1)) / math.sqrt(n)
    b = d[np.random.default_rng(seed).integers(0, n, size=(n_boot, n))]
    ok = np.ptp(b, axis=1) > 0  # a resample of one value repeated has no spread
    tstar = (b.mean(axis=1)[ok] - mean) / (b[ok].std(axis=1, ddof=1) / math.sqrt(n))
    alpha = (1 - level) / 2
    q_lo, q_hi = np.quantile(tstar, [alpha, 1 - alpha])
    return [mean - float(q_hi) * se, mean - float(q_lo) * se]


def sign_test(k_positive: int, k_negative: int) -> float:
    """Exact two-sided sign test: P(a split at least this uneven | each sign equally likely)."""
    n = k_positive + k_negative
    if n == 0:
        return 1.0
    k = min(k_positive, k_negative)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def sign_flip_p(d: Sequence[float], *, n_flips: int = 2**16, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of mean(d) against 0: every sign pattern when there are at most 16
    values, else ``n_flips`` random ones (the observed pattern counted in, so p > 0)."""
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    if n == 0:
        return 1.0
    observed = abs(d.sum()) - 1e-12 * (1 + np.abs(d).sum())  # ties with the observed sum count as extreme
    if n <= 16:
        return float((np.abs(_sign_patterns(n) @ d) >= observed).mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_flips, n))
    return float(((np.abs(signs @ d) >= observed).sum() + 1) / (n_flips + 1))


@functools.lru_cache(maxsize=17)
def _sign_patterns(n: int) -> np.ndarray:
    """Every +-1 pattern of length n, one per row (2**n x n; 8 MB at n = 16)."""
    signs = (1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)).astype(np.float64)
    signs.flags.writeable = False
    return signs


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` (a positive integer) degrees of freedom, to ~1e-12.

    Bisection on the closed-form distribution function for integer df (Abramowitz & Stegun 26.7.3-4), so that
    NumPy is all this module needs."""
    if not 0 < p < 1 or df < 1 or int(df) != df:
        raise ValueError(f"t_quantile needs 0 < p < 1 and a positive integer df, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    target = 2 * p - 1  # P(|T| < t)
    lo, hi = 0.0, 1.0
    while _t_central(hi, int(df)) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central(mid, int(df)) < target else (lo, mid)
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return (lo + hi) / 2


def _t_central(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(2, df, 2):  # 1 + (1/2) c^2 + (1*3)/(2*4) c^4 + ... up to c^(df-2)
            term *= c2 * (k - 1) / k
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term = math.cos(theta)
    total = term
    for k in range(3, df, 2):  # cos + (2/3) cos^3 + (2*4)/(3*5) cos^5 + ... up to cos^(df-2)
        term *= c2 * (k - 1) / k
        total += term
    return 2 / math.pi * (theta + s * total)


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
