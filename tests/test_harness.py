"""The benchmark harness (benchmarks/harness.py): the equal grid budget is enforced, differences are paired by
build, and a comparison's results folder starts with its provenance. No training: the runs are stubbed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harness  # noqa: E402
from harness import Arm, Suite  # noqa: E402


def _result(correct: list[float], cats: list[str] | None = None) -> dict:
    cats = cats or ["colour"] * len(correct)
    return {"test-cp": {"correct": correct, "category": cats}, "audit": {"follows_text": [np.nan] + correct[1:]}}


def _suite(**kw) -> Suite:
    base = dict(name="toy", title="Toy", setup="Toy setup.", baseline="plain", base=lambda s: f"zoo:toy-seed{s}",
                evaluate=lambda scorer, args: {}, columns={"test-cp": "test-cp", "audit/follows_text": "follows"},
                arms=(Arm("plain", "toy/plain", grid=({"learning_rate": 1e-3}, {"learning_rate": 3e-3})),
                      Arm("fix", "toy/fix", grid=({}, {"recipe_config": {"a": 1}}))))
    return Suite(**{**base, **kw})


def _args(**kw):
    return argparse.Namespace(**{"seeds": "0-3", "arms": None, "n_eval": 4, "n_audit": 4, "n_probe": 0,
                                 "n_val": 4, **kw})


def test_seeds_parse_ranges_and_lists():
    assert harness.parse_seeds("0-3") == [0, 1, 2, 3]
    assert harness.parse_seeds("0-2,7") == [0, 1, 2, 7]


def test_selection_refuses_unequal_budgets_before_training(monkeypatch):
    suite = _suite(arms=(Arm("plain", "toy/plain", grid=({}, {"learning_rate": 3e-3})),
                         Arm("fix", "toy/fix", grid=({}, {"x": 1}, {"x": 2}))))
    monkeypatch.setattr(harness, "run_arm", lambda *a, **k: pytest.fail("trained before checking the budget"))
    with pytest.raises(SystemExit, match="same number of settings"):
        harness.select(suite, _args())


def test_differences_are_paired_by_build_and_example():
    # build 0: fix right where plain is wrong on one of 4; build 1: the same both; build 2: fix worse on two
    results = {"plain": {0: _result([0, 1, 1, 1]), 1: _result([1, 1, 0, 0]), 2: _result([1, 1, 1, 1])},
               "fix": {0: _result([1, 1, 1, 1]), 1: _result([1, 1, 0, 0]), 2: _result([0, 0, 1, 1])}}
    rows = harness.summarise(results, ["test-cp", "audit/follows_text"], "plain")
    d = rows["fix"]["test-cp vs plain"]
    assert d["per_build"] == pytest.approx([0.25, 0.0, -0.5])
    assert (d["k_positive"], d["k_negative"], d["n_builds"]) == (1, 1, 3)
    assert rows["fix"]["test-cp"]["per_run"] == pytest.approx([1.0, 0.5, 0.5])
    # NaN examples (a probe with no value) drop out of the pair, not the build
    f = rows["fix"]["audit/follows_text vs plain"]
    assert f["per_build"] == pytest.approx([0.0, 0.0, -1 / 3])  # [nan, -1, 0, 0] -> -1/3, not -1/4
    assert "test-cp vs plain" not in rows["plain"]


def test_compare_writes_one_folder_with_provenance_and_k_of_n(monkeypatch, tmp_path):
    suite = _suite()
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "selection.json").write_text(json.dumps(
        {"chosen": {"plain": {"setting": {"learning_rate": 3e-3}}, "fix": {"setting": {}}}}))
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    seen = []

    def fake_run(suite_, arm, seed, setting, evaluator, args):
        seen.append((arm.name, seed, json.dumps(setting, sort_keys=True)))
        rng = np.random.default_rng(seed)
        correct = (rng.random(20) < (0.7 if arm.name == "fix" else 0.4)).astype(float).tolist()
        return _result(correct), 0.1 if arm.name == "plain" else 0.15

    monkeypatch.setattr(harness, "run_arm", fake_run)
    harness.compare(suite, _args())
    assert ("plain", 2, '{"learning_rate": 0.003}') in seen and len(seen) == 8  # chosen settings, 2 arms x 4 builds
    text = (tmp_path / "toy" / "compare.md").read_text()
    assert text.startswith("- command: ") and "- commit: " in text and "- machine: " in text
    fix_row = next(line for line in text.splitlines() if line.startswith("| fix |"))
    assert "/4" in fix_row and "1.50x" in fix_row
    saved = json.loads((tmp_path / "toy" / "compare.json").read_text())
    assert saved["provenance"]["command"] and saved["rows"]["fix"]["test-cp vs plain"]["n_builds"] == 4


def test_selection_applies_one_rule_to_arms_and_decode_rows(monkeypatch, tmp_path):
    from harness import Served

    suite = _suite(served=(Served("decoded", grid=("contrastive:alpha=1", "contrastive:alpha=2")),))
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    monkeypatch.setattr(harness, "write_chosen_config", lambda *a: None)
    val = {  # (val-balanced, val): the floor is plain's first setting's val (0.9) minus 0.02
        "plain": {'{"learning_rate": 0.001}': (0.6, 0.9), '{"learning_rate": 0.003}': (0.7, 0.95)},
        "fix": {"{}": (0.65, 0.9), '{"recipe_config": {"a": 1}}': (0.9, 0.8)},  # the better one loses val: out
        "decoded": {"contrastive:alpha=1": (0.7, 0.89), "contrastive:alpha=2": (0.75, 0.85)},
    }

    def fake(kind):
        def run(suite_, arm, seed, setting, evaluator, args, *rest):
            key = setting if isinstance(setting, str) else json.dumps(setting, sort_keys=True)
            vb, v = val[arm.name][key]
            res = {"val-balanced": {"correct": [1.0] * int(vb * 100) + [0.0] * (100 - int(vb * 100))},
                   "val": {"correct": [1.0] * int(v * 100) + [0.0] * (100 - int(v * 100))}}
            return (res, 0.1) if kind == "arm" else res
        return run

    monkeypatch.setattr(harness, "run_arm", fake("arm"))
    monkeypatch.setattr(harness, "run_served", lambda s, served, seed, spec, source, ev, args:
                        fake("served")(s, served, seed, spec, ev, args))
    harness.select(suite, _args())
    chosen = json.loads((tmp_path / "toy" / "selection.json").read_text())["chosen"]
    assert chosen["plain"]["setting"] == {"learning_rate": 3e-3}
    assert chosen["fix"]["setting"] == {}  # the higher val-balanced setting fell below the floor
    assert chosen["decoded"]["setting"] == "contrastive:alpha=1"  # alpha=2 fell below it too
    assert harness.chosen_settings(suite)["decoded"] == "contrastive:alpha=1"


def test_every_results_file_names_its_command_commit_and_machine_at_its_top():
    """Issue 26: a number a reviewer reads can be traced to the command, the commit and the machine that made it."""
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    missing = []
    for md in sorted(results.rglob("*.md")):
        head = "\n".join(md.read_text().splitlines()[:12])
        if not all(f"- {key}:" in head for key in ("command", "commit", "machine")):
            missing.append(str(md.relative_to(results)))
    assert not missing, f"results files without '- command:', '- commit:' and '- machine:' in their first lines: {missing}"
