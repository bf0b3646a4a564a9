"""How numbers are written for people, in every report: a mean with its interval, a rate as a percentage."""

from __future__ import annotations


def fmt(stat, digits: int = 2) -> str:
    """``0.72 [0.68, 0.76]`` from a {mean, ci95} dict, a bare number, or None."""
    if stat is None:
        return "n/a"
    if isinstance(stat, dict):
        if stat.get("mean") is None:
            return "n/a"
        lo, hi = stat.get("ci95") or (None, None)
        if lo is None:
            return f"{stat['mean']:.{digits}f}"
        return f"{stat['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{stat:.{digits}f}"


def pct(stat: dict | None) -> str:
    """``70% [62, 78]`` from a {mean, ci95} of a rate."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    lo, hi = stat["ci95"]
    return f"{100 * stat['mean']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"
