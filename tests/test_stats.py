"""Intervals that can be wrong: clustered, hierarchical and difference bootstraps against data of known spread."""

from __future__ import annotations

import numpy as np
import pytest

from mbias.stats import bootstrap_diff, bootstrap_hierarchical, bootstrap_mean


def _clustered_sample(rng, n_clusters, per_cluster=5, true_mean=0.3, between=1.0, within=0.1):
    """Values whose clusters (images) carry most of the spread: the questions about one image agree."""
    centres = true_mean + between * rng.standard_normal(n_clusters)
    values = np.repeat(centres, per_cluster) + within * rng.standard_normal(n_clusters * per_cluster)
    return values, np.repeat(np.arange(n_clusters), per_cluster).astype(str)


def test_single_cluster_bootstrap_has_zero_width():
    stat = bootstrap_mean([0.1, 0.5, 0.9], ["img"] * 3)
    assert stat["mean"] == pytest.approx(0.5) and stat["ci95"] == [pytest.approx(0.5), pytest.approx(0.5)]
    unclustered = bootstrap_mean([0.1, 0.5, 0.9])
    assert unclustered["ci95"][1] - unclustered["ci95"][0] > 0.3


def test_clustered_interval_shrinks_with_more_clusters_and_is_wider_than_a_naive_one():
    rng = np.random.default_rng(7)
    widths = []
    for k in (10, 40, 160):
        runs = []
        for _ in range(8):  # a mean over datasets: one draw of a few clusters has a noisy spread
            values, groups = _clustered_sample(rng, k)
            lo, hi = bootstrap_mean(values, groups, n_boot=500)["ci95"]
            naive_lo, naive_hi = bootstrap_mean(values, n_boot=500)["ci95"]  # 5 correlated questions as 5 samples
            assert hi - lo > 1.5 * (naive_hi - naive_lo)
            runs.append(hi - lo)
        widths.append(np.mean(runs))
    assert widths[0] > 1.5 * widths[1] > 2.25 * widths[2]  # ~ 1/sqrt(clusters): halves per 4x clusters


def test_clustered_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    hits = 0
    for rep in range(200):
        values, groups = _clustered_sample(rng, 30)
        lo, hi = bootstrap_mean(values, groups, n_boot=500, seed=rep)["ci95"]
        hits += lo <= 0.3 <= hi
    assert 0.88 <= hits / 200 <= 0.99  # a question-level interval covers about half


def test_the_level_sets_the_interval_width():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    wide, narrow = bootstrap_diff(a, b, level=0.99)["ci95"], bootstrap_diff(a, b, level=0.5)["ci95"]
    assert wide[1] - wide[0] > 2 * (narrow[1] - narrow[0])  # ~ z(0.995) / z(0.75) = 3.8


def test_hierarchical_interval_widens_when_runs_disagree():
    rng = np.random.default_rng(5)
    agree = {s: rng.normal(0.5, 0.1, 300) for s in range(3)}
    disagree = {s: rng.normal(0.2 + 0.3 * s, 0.1, 300) for s in range(3)}
    a, d = bootstrap_hierarchical(agree), bootstrap_hierarchical(disagree)
    assert d["ci95"][1] - d["ci95"][0] > 5 * (a["ci95"][1] - a["ci95"][0])
    assert d["per_run"] == pytest.approx([0.2, 0.5, 0.8], abs=0.03) and d["mean"] == pytest.approx(0.5, abs=0.03)
    assert bootstrap_hierarchical({0: []})["mean"] is None


# --- differences over builds: across_builds, and the coverage that justifies it (docs/methods.md, "Intervals over
# builds"; the full simulation is benchmarks/coverage.py) ---

def _coverage_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py"
    spec = importlib.util.spec_from_file_location("mbias_benchmark_coverage", path)  # not the `coverage` package
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_t_quantile_matches_the_table():
    from mbias.stats import t_quantile

    for df, q in ((1, 12.706204736174705), (2, 4.302652729911275), (9, 2.262157162740992), (25, 2.059538552753294),
                  (200, 1.9718962236339088)):
        assert t_quantile(0.975, df) == pytest.approx(q, rel=1e-9)
    assert t_quantile(0.025, 9) == pytest.approx(-2.262157162740992, rel=1e-9)
    assert t_quantile(0.5, 4) == pytest.approx(0.0, abs=1e-9)


def test_across_builds_reports_k_of_n_and_exact_tests():
    from mbias.stats import across_builds

    # the replication's miles - plain per build (benchmarks/results/imbalance_replication.json)
    d = [0.076, 0.168, 0.032, 0.39, -0.012, 0.148, 0.094, 0.316, 0.126, 0.482]
    s = across_builds(d)
    assert (s["n_builds"], s["k_positive"], s["k_negative"]) == (10, 9, 1)
    assert s["mean"] == pytest.approx(0.182)
    assert s["ci_t"] == [pytest.approx(0.06645, abs=1e-5), pytest.approx(0.29755, abs=1e-5)]  # scipy's t.interval
    lo, hi = s["ci_bootstrap_t"]
    assert 0 < lo < s["mean"] < hi  # and skewed: the upper side longer, as the builds are
    assert hi - s["mean"] > s["mean"] - lo
    assert s["ci95"] == [min(lo, s["ci_t"][0]), max(hi, s["ci_t"][1])]
    assert across_builds(d, seed=3)["ci_t"] == s["ci_t"] and across_builds(d)["ci95"] == s["ci95"]
    assert s["p_sign"] == pytest.approx(22 / 1024)  # 2 * P(Binomial(10, 1/2) <= 1)
    assert s["p_flip"] == pytest.approx(4 / 1024)  # exact: 4 of the 1024 sign patterns are as extreme
    # three builds, all positive (poe - LoRA, recipes/legacy-3-builds.json): the sign test cannot go below 0.25, the
    # interval is t's alone (bootstrap-t's ends are noise over three builds), and wide
    three = across_builds({0: [0.3] * 5, 1: [0.326] * 5, 2: [0.05] * 5})
    assert (three["k_positive"], three["n_builds"], three["p_sign"]) == (3, 3, 0.25)
    assert three["ci_bootstrap_t"] == [None, None] and three["ci95"] == three["ci_t"]
    assert three["ci95"] == [pytest.approx(-0.153, abs=1e-3), pytest.approx(0.604, abs=1e-3)]
    assert across_builds([0.2])["ci95"] == [None, None]


def test_the_simulations_hierarchical_bootstrap_is_the_librarys():
    """benchmarks/coverage.py draws the hierarchical bootstrap in a vectorised normal form; the same data through
    mbias.stats.bootstrap_hierarchical gives the same interval."""
    cov = _coverage_module()
    rng = np.random.default_rng(4)
    counts = cov.simulate_builds("bimodal", 5, rng)
    per_example = {b: np.repeat([1.0, -1.0, 0.0], c) for b, c in enumerate(counts)}
    lib = bootstrap_hierarchical(per_example, n_boot=4000, seed=1)["ci95"]
    sim = cov.intervals(counts, np.random.default_rng(2), 4000)["hierarchical bootstrap"]
    assert sim == (pytest.approx(lib[0], abs=0.01), pytest.approx(lib[1], abs=0.01))


def test_the_chosen_interval_covers_and_the_bootstrap_over_three_builds_does_not():
    """A small run of benchmarks/coverage.py's simulation: per-build differences either normal or bimodal (plain
    training collapses on a quarter of builds), 500 examples per build. across_builds' interval over ten builds
    covers at least 90% (the full run: results/coverage.md); the hierarchical bootstrap over three builds covers
    far less than its nominal 95%."""
    from mbias.stats import across_builds

    cov = _coverage_module()
    rng = np.random.default_rng(26)
    for shape in ("normal", "bimodal"):
        truth, hits = cov.true_mean(shape), 0
        for _ in range(400):
            counts = cov.simulate_builds(shape, 10, rng)
            lo, hi = across_builds((counts[:, 0] - counts[:, 1]) / cov.N_EXAMPLES, n_boot=500, n_flips=1)["ci95"]
            hits += lo <= truth <= hi
        assert hits / 400 >= 0.9, (shape, hits / 400)
    truth, hits = cov.true_mean("normal"), 0
    for rep in range(150):
        counts = cov.simulate_builds("normal", 3, rng)
        per_example = {b: np.repeat([1.0, -1.0, 0.0], c) for b, c in enumerate(counts)}
        lo, hi = bootstrap_hierarchical(per_example, n_boot=200, seed=rep)["ci95"]
        hits += lo <= truth <= hi
    assert hits / 150 < 0.87  # 0.78 in the full run


def test_an_interval_over_equal_builds_is_the_value_itself():
    # ten builds of one unchanging model (an untrained reference row): floats whose std is not exactly 0
    from mbias.stats import across_builds

    stat = across_builds([0.1 + 0.2] * 10)
    assert stat["ci95"] == pytest.approx([0.3, 0.3]) and stat["k_positive"] == 10
