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
