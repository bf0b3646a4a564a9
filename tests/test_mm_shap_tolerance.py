"""mm_shap's tolerance-based stopping (issue 28): the antithetic pairs' spread gives each sample's standard error of
T-SHAP, the estimator stops once it is at or below the tolerance, the budget is the cap, and the audit records
the error it reached."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbias.diagnose.config import AuditConfig, build_probes
from mbias.errors import ConfigError
from mbias.probes import PROBES, SampleContext
from mbias.probes.mm_shap import MMShapConfig, t_shap
from mbias.shapley import exact_shapley, permutation_shapley

N, N_TEXT = 16, 6


def _game(seed: int = 0):
    """A game over N players (the first N_TEXT are 'text') with main effects and a saturating interaction of every
    order (a game with interactions of order 2 at most would be exact from one antithetic pair)."""
    rng = np.random.default_rng(seed)
    w, u = rng.normal(scale=0.1, size=N), rng.normal(size=N)
    groups = [rng.choice(N, size=5, replace=False) for _ in range(4)]

    def value(masks: torch.Tensor) -> torch.Tensor:
        m = masks.double().numpy()
        quorum = sum((m[:, g].sum(1) >= 3) * (-1) ** k for k, g in enumerate(groups))  # majority games
        return torch.from_numpy(m @ w + np.tanh(m @ u - 1) + quorum)

    return value


def _stat(phi):
    return t_shap(phi, N_TEXT)[0]


def test_tighter_tolerance_reaches_a_smaller_error_and_costs_more():
    value = _game()
    loose = permutation_shapley(value, N, 400, rng=np.random.default_rng(1), tolerance=0.05, statistic=_stat)
    tight = permutation_shapley(value, N, 400, rng=np.random.default_rng(1), tolerance=0.02, statistic=_stat)
    assert loose.stopped_by == tight.stopped_by == "tolerance"
    assert loose.stderr <= 0.05 and tight.stderr <= 0.02
    assert tight.stderr < loose.stderr
    assert tight.n_permutations > loose.n_permutations and tight.n_evaluations > loose.n_evaluations
    # and the achieved error is real: the tight estimate is near the exact T-SHAP
    exact = _stat(exact_shapley(value, N).phi)
    assert abs(_stat(tight.phi) - exact) < 4 * 0.02


def test_the_budget_is_a_cap_and_the_draws_are_the_fixed_budgets():
    value = _game()
    capped = permutation_shapley(value, N, 10, rng=np.random.default_rng(2), tolerance=1e-6, statistic=_stat)
    fixed = permutation_shapley(value, N, 10, rng=np.random.default_rng(2), statistic=_stat)
    assert capped.stopped_by == "cap" and capped.n_permutations == 10
    assert capped.stderr > 1e-6
    # the same permutations as a fixed budget of 10: the same estimate, the same coalitions
    np.testing.assert_allclose(capped.phi, fixed.phi, atol=1e-12)
    assert capped.n_evaluations == fixed.n_evaluations and capped.stderr == pytest.approx(fixed.stderr)
    assert fixed.stopped_by is None
    # efficiency holds whenever it stops (every permutation telescopes)
    early = permutation_shapley(value, N, 400, rng=np.random.default_rng(2), tolerance=0.05, statistic=_stat)
    assert early.phi.sum() == pytest.approx(early.v_full - early.v_empty)
    assert 6 <= early.n_permutations < 400


def test_the_reported_standard_error_matches_the_spread_over_seeds():
    """The jackknife over antithetic pairs estimates T-SHAP's real sampling error (a wrong formula, e.g. one that
    forgets the pairs are correlated within, or divides by the permutations instead of the pairs, fails this)."""
    value = _game(3)
    runs = [permutation_shapley(value, N, 12, rng=np.random.default_rng(s), statistic=_stat) for s in range(60)]
    spread = np.std([_stat(r.phi) for r in runs], ddof=1)
    reported = np.sqrt(np.mean([r.stderr ** 2 for r in runs]))
    assert 0.6 < reported / spread < 1.6


@pytest.mark.parametrize("field, value, says", [
    ("tolerance", 0, "MMShapConfig.tolerance must be a number in (0, 1]"),
    ("tolerance", -0.1, "MMShapConfig.tolerance"),
    ("tolerance", 1.5, "MMShapConfig.tolerance"),
    ("tolerance", "0.05", "MMShapConfig.tolerance"),
    ("min_permutations", 2, "MMShapConfig.min_permutations must be an integer >= 4"),
])
def test_bad_values_are_refused_naming_the_field(field, value, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        build_probes(AuditConfig(probe_config={"mm_shap": {field: value}}))
    build_probes(AuditConfig(probe_config={"mm_shap": {"tolerance": None}}))  # unset: a fixed budget


@pytest.fixture(scope="module")
def zoo():
    from mbias.models import load_model
    from mbias.synth import load_synth

    return load_model("zoo:shapes-p90", device="cpu"), load_synth("shapes-p90/test-balanced")


def test_the_audit_records_the_error_it_reached(zoo):
    scorer, ds = zoo
    by_tol = {}
    for tol in (0.08, 0.02):
        probe = PROBES.get("mm_shap")(MMShapConfig(tolerance=tol, n_permutations=60, estimator="permutation"))
        records = []
        for i in range(3):
            rec = probe.run(SampleContext(scorer, scorer.prepare(ds[i]), swap_image=ds[i + 1].image))
            assert rec["n_permutations"] <= 60
            assert rec["stopped_by"] == "cap" or rec["t_shap_stderr"] <= tol
            records.append(rec)
        summary = probe.summarize(records, [str(i) for i in range(3)])
        assert summary["tolerance"] == tol and summary["max_t_shap_stderr"] >= summary["t_shap_stderr"] > 0
        rows = dict(probe.report_rows(summary))
        assert f"tolerance {tol:g}" in rows["Monte-Carlo standard error of T-SHAP, per sample"]
        by_tol[tol] = (summary, records)
    assert by_tol[0.02][0]["t_shap_stderr"] < by_tol[0.08][0]["t_shap_stderr"]
    assert by_tol[0.02][0]["mean_evaluations"] > by_tol[0.08][0]["mean_evaluations"]
    # without a tolerance the budget is fixed, and the error is still reported
    fixed = PROBES.get("mm_shap")(MMShapConfig(tolerance=None, n_permutations=8, estimator="permutation"))
    rec = fixed.run(SampleContext(scorer, scorer.prepare(ds[0]), swap_image=ds[1].image))
    assert rec["n_permutations"] == 8 and rec["stopped_by"] is None and rec["t_shap_stderr"] > 0
