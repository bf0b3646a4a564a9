"""Do the intervals over builds cover? Coverage of a nominal 95% interval for a recipe's mean difference over
builds, simulated on data shaped like ours.

Each simulated run has n builds (n = 3, 5, 10, 16, 26). On build b the true difference between an arm and plain
training is d_b, drawn from one of three shapes (points of accuracy on test-cp):

- ``normal``: d_b ~ N(12.5, 10);
- ``bimodal``: plain training collapses onto the wording on 25% of builds (7 of 26 in our runs): there
  d_b ~ N(50, 8), elsewhere d_b ~ N(0, 8); mean 12.5, the shape of the ``miles`` / ``mnl`` replication;
- ``bimodal, rare``: the same with collapses on 10% of builds (mean 5): a stress case, not our data.

Both arms are then scored on 500 examples per build (plain's accuracy 0.65, or 0.20 on a collapsed build; the
arm's plain's + d_b; each example right or wrong independently), which adds the within-build binomial noise. The
estimand is E[d_b], the mean difference over the population of builds. Intervals compared, all at 95%:

- ``hierarchical bootstrap``: ``mbias.stats.bootstrap_hierarchical`` (resample builds, then examples within each
  build; percentile), what the recipe tables used. Simulated in vectorised form: a paired per-example difference
  is -1, 0 or +1, so a build's mean over 500 resampled examples is, to the central limit theorem's accuracy at
  n = 500, normal around the build's mean with variance (p+ + p- - (p+ - p-)^2) / 500 (tests/test_stats.py
  checks that this and the library's loop give the same intervals);
- ``bootstrap over builds``: percentile bootstrap of the per-build means;
- ``BCa``: bias-corrected and accelerated bootstrap over builds (jackknife acceleration);
- ``t over builds``: Student t on the per-build means (``ci_t`` of ``mbias.stats.across_builds``);
- ``bootstrap-t``: studentized bootstrap over builds (``ci_bootstrap_t``, ``mbias.stats.bootstrap_t``);
- ``across_builds: wider of t and bootstrap-t``: the lower of their lower ends to the higher of their upper ends
  (t alone below ``BOOTSTRAP_T_MIN_BUILDS`` = 10 builds), the interval ``across_builds`` reports (``ci95``).

It also reports how often the exact sign test and the sign-flip permutation test (both in ``across_builds``)
reject at 5% when the true difference is as simulated (power), and how often "k of n builds positive" is n.

    python benchmarks/coverage.py                 # -> results/coverage.{md,json}, ~2-4 min on 2 cores
    python benchmarks/coverage.py --reps 400      # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np

from mbias.provenance import results_header
from mbias.stats import BOOTSTRAP_T_MIN_BUILDS, across_builds, bootstrap_t

OUT = Path(__file__).parent / "results"
N_EXAMPLES = 500
BUILDS = (3, 5, 10, 16, 26)
CHOSEN = "across_builds: wider of t and bootstrap-t"
METHODS = ("hierarchical bootstrap", "bootstrap over builds", "BCa", "t over builds", "bootstrap-t", CHOSEN)
# name -> (share of builds where plain collapses, (mean, sd) of d there, (mean, sd) elsewhere), in accuracy units
SHAPES = {
    "normal": (0.0, (0.0, 0.0), (0.125, 0.10)),
    "bimodal": (0.25, (0.50, 0.08), (0.0, 0.08)),
    "bimodal, rare": (0.10, (0.50, 0.08), (0.0, 0.08)),
}
PLAIN_ACCURACY, PLAIN_COLLAPSED = 0.65, 0.20
_norm_cdf, _norm_ppf = NormalDist().cdf, NormalDist().inv_cdf


def true_mean(shape: str) -> float:
    share, collapsed, other = SHAPES[shape]
    return share * collapsed[0] + (1 - share) * other[0]


def simulate_builds(shape: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) counts of paired per-example differences (+1: only the arm right, -1: only plain right, 0: same)."""
    share, collapsed, other = SHAPES[shape]
    hit = rng.random(n) < share
    d = np.where(hit, rng.normal(*collapsed, n), rng.normal(*other, n))
    plain = np.where(hit, PLAIN_COLLAPSED, PLAIN_ACCURACY)
    arm = np.clip(plain + d, 0.0, 1.0)  # never reached with these shapes (4+ sd away)
    p_up, p_down = arm * (1 - plain), plain * (1 - arm)
    probs = np.stack([p_up, p_down, 1 - p_up - p_down], axis=1)
    return rng.multinomial(N_EXAMPLES, probs)


def intervals(counts: np.ndarray, rng: np.random.Generator, n_boot: int, level: float = 0.95) -> dict:
    """Each method's interval for the mean over builds of the per-build mean difference, and under "tests"
    ``across_builds``' whole answer (its p-values and k of n)."""
    n = len(counts)
    means = (counts[:, 0] - counts[:, 1]) / N_EXAMPLES
    alpha = (1 - level) / 2
    out = {}

    # builds, then examples: a resampled build's mean is normal around its mean (500 examples; see the docstring)
    pick = rng.integers(0, n, size=(n_boot, n))
    p_up, p_down = counts[:, 0] / N_EXAMPLES, counts[:, 1] / N_EXAMPLES
    within_sd = np.sqrt((p_up + p_down - (p_up - p_down) ** 2) / N_EXAMPLES)
    boots = (means[pick] + within_sd[pick] * rng.standard_normal((n_boot, n))).mean(1)
    out["hierarchical bootstrap"] = tuple(np.quantile(boots, [alpha, 1 - alpha]))

    b = means[pick]
    bm = b.mean(1)
    out["bootstrap over builds"] = tuple(np.quantile(bm, [alpha, 1 - alpha]))

    stat = across_builds(means, level=level, n_boot=n_boot, n_flips=2000, seed=int(rng.integers(2**31)))
    out["tests"] = stat
    out["t over builds"] = tuple(stat["ci_t"])
    out["bootstrap-t"] = tuple(bootstrap_t(means, level=level, n_boot=n_boot, seed=int(rng.integers(2**31))))
    out[CHOSEN] = tuple(stat["ci95"])

    mean = means.mean()
    prop = np.mean(bm < mean) + 0.5 * np.mean(bm == mean)
    z0 = _norm_ppf(min(max(prop, 1e-6), 1 - 1e-6))
    jack = (means.sum() - means) / (n - 1)
    dev = jack.mean() - jack
    denom = 6 * (dev**2).sum() ** 1.5
    acc = (dev**3).sum() / denom if denom > 0 else 0.0
    qs = []
    for z in (_norm_ppf(alpha), _norm_ppf(1 - alpha)):
        qs.append(_norm_cdf(z0 + (z0 + z) / (1 - acc * (z0 + z))))
    out["BCa"] = tuple(np.quantile(bm, qs))
    return out


def run(shape: str, n: int, reps: int, n_boot: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, n, list(SHAPES).index(shape)])
    truth = true_mean(shape)
    hits = {m: 0 for m in METHODS}
    width = {m: 0.0 for m in METHODS}
    miss_low = {m: 0 for m in METHODS}  # interval entirely below the truth
    sign_rejects = flip_rejects = all_positive = 0
    for _ in range(reps):
        counts = simulate_builds(shape, n, rng)
        found = intervals(counts, rng, n_boot)
        stat = found.pop("tests")
        for m, (lo, hi) in found.items():
            hits[m] += lo <= truth <= hi
            miss_low[m] += hi < truth
            width[m] += hi - lo
        sign_rejects += stat["p_sign"] <= 0.05
        flip_rejects += stat["p_flip"] <= 0.05
        all_positive += stat["k_positive"] == n
    return {"shape": shape, "n_builds": n, "reps": reps, "true_mean": truth,
            "coverage": {m: hits[m] / reps for m in METHODS},
            "misses_below": {m: miss_low[m] / reps for m in METHODS},
            "mean_width_points": {m: 100 * width[m] / reps for m in METHODS},
            "sign_test_rejects": sign_rejects / reps, "sign_flip_rejects": flip_rejects / reps,
            "all_builds_positive": all_positive / reps}


def write(rows: list[dict], args, wall: float) -> None:
    header, prov = results_header(sys.argv, wall_seconds=wall)
    se = math.sqrt(0.95 * 0.05 / args.reps)
    lines = ["# Coverage of intervals over builds (nominal 95%)", "", *header, "",
             f"{args.reps} simulated experiments per cell, {args.n_boot} bootstrap resamples each, {N_EXAMPLES} "
             "examples per build (benchmarks/coverage.py's docstring has the model). Coverage: the share of "
             "intervals that contain the true mean difference; its Monte Carlo standard error at 95% is "
             f"{100 * se:.1f} percentage points. Width: the mean width in points of accuracy. The interval mbias "
             f"reports is **{CHOSEN}** (t alone below {BOOTSTRAP_T_MIN_BUILDS} builds). The sign tests' rows "
             "give how often they reject at 5% (power: every shape has a true gain).", ""]
    for shape in SHAPES:
        share, collapsed, other = SHAPES[shape]
        lines += [f"## {shape}: " + (f"d ~ N({100 * other[0]:.1f}, {100 * other[1]:.0f})" if share == 0 else
                                     f"{share:.0%} of builds d ~ N({100 * collapsed[0]:.0f}, {100 * collapsed[1]:.0f}), "
                                     f"the others N({100 * other[0]:.0f}, {100 * other[1]:.0f})")
                  + f"; true mean {100 * true_mean(shape):+.1f} points", "",
                  "| interval | " + " | ".join(f"n = {n}" for n in args.builds) + " |",
                  "|---" * (len(args.builds) + 1) + "|"]
        cells = {(r["n_builds"]): r for r in rows if r["shape"] == shape}
        for m in METHODS:
            name = f"**{m}**" if m == CHOSEN else m
            lines.append(f"| {name} | " + " | ".join(
                f"{100 * cells[n]['coverage'][m]:.1f}% (width {cells[n]['mean_width_points'][m]:.1f})"
                for n in args.builds) + " |")
        lines.append("| sign test / sign-flip test reject at 5% | " + " | ".join(
            f"{100 * cells[n]['sign_test_rejects']:.1f}% / {100 * cells[n]['sign_flip_rejects']:.1f}%"
            for n in args.builds) + " |")
        lines.append("| all n builds positive | " + " | ".join(
            f"{100 * cells[n]['all_builds_positive']:.1f}%" for n in args.builds) + " |")
        lines.append("")
    for shape in ("bimodal", "bimodal, rare"):
        r = next((r for r in rows if r["shape"] == shape and r["n_builds"] == 10), None)
        if r is None:
            continue
        missed = 1 - r["coverage"][CHOSEN]
        below = r["misses_below"][CHOSEN]
        lines.append(f"- {shape}, ten builds: the chosen interval misses the true mean {missed:.1%} of the time, "
                     f"and lies wholly below it {below:.1%} of the time: samples with no or too few collapsed "
                     f"builds (with a collapse share q, none of ten builds collapses with probability (1 - q)^10 = "
                     f"{(1 - SHAPES[shape][0]) ** 10:.1%}, and then no interval built from the data reaches the "
                     "mean).")
    lines += ["", "`misses_below` in the JSON has every cell's share of intervals lying wholly below the truth."]
    text = "\n".join(lines) + "\n"
    OUT.mkdir(exist_ok=True)
    (OUT / "coverage.md").write_text(text)
    (OUT / "coverage.json").write_text(json.dumps({"provenance": prov, "chosen": CHOSEN, "reps": args.reps,
                                                   "n_boot": args.n_boot, "n_examples": N_EXAMPLES,
                                                   "shapes": {k: {"collapse_share": v[0], "collapsed": v[1],
                                                                  "other": v[2]} for k, v in SHAPES.items()},
                                                   "coverage": _table(rows, "coverage"),
                                                   "mean_width_points": _table(rows, "mean_width_points"),
                                                   "tests": {shape: {field: {str(r["n_builds"]): r[field] for r in rows
                                                                             if r["shape"] == shape}
                                                                     for field in ("sign_test_rejects",
                                                                                   "sign_flip_rejects",
                                                                                   "all_builds_positive")}
                                                             for shape in SHAPES},
                                                   "rows": rows}, indent=2))
    print(text)


def _table(rows: list[dict], field: str) -> dict:
    """shape -> method -> str(number of builds) -> value, for the docs' tags (benchmarks/check_claims.py)."""
    return {shape: {m: {str(r["n_builds"]): r[field][m] for r in rows if r["shape"] == shape} for m in METHODS}
            for shape in SHAPES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000, help="simulated experiments per shape and number of builds")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples per interval")
    ap.add_argument("--builds", type=lambda s: [int(x) for x in s.split(",")], default=list(BUILDS),
                    help="numbers of builds, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    for shape in SHAPES:
        for n in args.builds:
            rows.append(run(shape, n, args.reps, args.n_boot, args.seed))
            r = rows[-1]
            print(json.dumps({"shape": shape, "n": n, **{m: round(c, 3) for m, c in r["coverage"].items()}}),
                  flush=True)
    write(rows, args, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
