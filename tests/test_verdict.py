"""The verdict rule on hand-made summaries at each of its boundaries, and the words the reports use for it."""

from __future__ import annotations

import pytest

from mbias.reports.content import verdict_label, verdict_sentence
from mbias.verdict import FOLLOW_FLOOR, MIN_CONFLICTS, SHARE_EXTREME, verdict


def stat(mean, lo=None, hi=None, n=100):
    return {"mean": mean, "ci95": [mean - 0.05 if lo is None else lo, mean + 0.05 if hi is None else hi], "n": n}


def summary(follows_text=None, follows_image=None, share=None, n_text=100, n_image=100):
    probes = {}
    if share is not None:
        probes["modality_shapley"] = {"language_share": share}
    if follows_text is not None or follows_image is not None:
        probes["conflict"] = {"follows_text": follows_text or stat(None, None, None),
                              "follows_image": follows_image or stat(None, None, None),
                              "n_text_conflicts": n_text, "n_image_conflicts": n_image}
    return probes


def _v(**kw):
    return verdict(summary(**kw), 0.05)


@pytest.mark.parametrize("lo, side", [(FOLLOW_FLOOR + 0.01, "language"), (FOLLOW_FLOOR, "balanced"),
                                      (FOLLOW_FLOOR - 0.01, "balanced")])
def test_following_the_wording_counts_once_its_interval_clears_the_floor(lo, side):
    v = _v(follows_text=stat(0.2, lo, 0.29), follows_image=stat(0.02), share=stat(0.5))
    assert v["dominant_modality"] == side and v["rests_on"] == "conflict"
    assert v["severity"] == ("slight" if side == "language" else "none")


@pytest.mark.parametrize("mean, lo, hi, severity", [
    (0.2, 0.12, 0.29, "slight"), (0.2, 0.14, 0.30, "slight-moderate"), (0.31, 0.25, 0.35, "slight-moderate"),
    (0.29, 0.25, 0.35, "slight-moderate"), (0.5, 0.30, 0.79, "moderate"), (0.75, 0.70, 0.80, "moderate-severe"),
    (0.81, 0.75, 0.85, "moderate-severe"), (0.9, 0.80, 0.97, "severe"), (0.5, 0.2, 0.9, "slight-severe")])
def test_severity_is_the_band_the_whole_interval_lies_in_else_the_span(mean, lo, hi, severity):
    # the point estimate does not decide: 0.31 [0.25, 0.35] and 0.29 [0.25, 0.35] are the same verdict
    v = _v(follows_text=stat(mean, lo, hi), follows_image=stat(0.05), share=stat(0.6))
    assert (v["dominant_modality"], v["severity"]) == ("language", severity)


def test_a_vision_verdict_reads_its_severity_from_the_image_rate_interval():
    v = _v(follows_text=stat(0.2, 0.12, 0.28), follows_image=stat(0.8, 0.72, 0.88), share=stat(0.4, 0.35, 0.45))
    assert (v["dominant_modality"], v["severity"]) == ("vision", "moderate-severe")
    assert verdict_label(v) == "vision-reliant to vision-dominant"
    assert "crosses the cut between bands at 80%" in verdict_sentence({"verdict": v})


@pytest.mark.parametrize("lo, hi, label, crosses", [
    (0.14, 0.35, "slightly to moderately language-reliant", "crosses the cut between bands at 30%"),
    (0.70, 0.85, "language-reliant to language-dominant", "crosses the cut between bands at 80%"),
    (0.20, 0.90, "slightly language-reliant to language-dominant", "crosses the cuts between bands at 30% and 80%"),
    (0.35, 0.70, "language-reliant", None)])
def test_a_span_reads_as_words_and_the_sentence_says_why(lo, hi, label, crosses):
    v = _v(follows_text=stat((lo + hi) / 2, lo, hi), follows_image=stat(0.05), share=stat(0.6))
    assert verdict_label(v) == label
    sentence = verdict_sentence({"verdict": v})
    assert (crosses in sentence) if crosses else "crosses" not in sentence


def test_every_severity_is_in_the_schema_and_has_words():
    import json
    from pathlib import Path

    from mbias.reports.content import SEVERITY_WORDS
    from mbias.verdict import SEVERITIES

    schema = json.loads((Path(__file__).parents[1] / "reports" / "summary.schema.json").read_text())
    enum = schema["properties"]["verdict"]["properties"]["severity"]["enum"]
    assert set(SEVERITIES) | {"none", None} == set(enum)
    assert set(SEVERITY_WORDS) == set(SEVERITIES)


def test_the_side_that_wins_more_conflicts_is_the_verdict():
    v = _v(follows_text=stat(0.3, 0.2, 0.4), follows_image=stat(0.9, 0.85, 0.95), share=stat(0.4, 0.35, 0.45))
    assert (v["dominant_modality"], v["severity"]) == ("vision", "severe")
    v = _v(follows_text=stat(0.5, 0.4, 0.6), follows_image=stat(0.45, 0.35, 0.55), share=stat(0.4, 0.35, 0.45))
    assert v["dominant_modality"] == "language"


@pytest.mark.parametrize("share_hi, side", [(0.49, "vision"), (0.5, "language"), (0.7, "language")])
def test_following_the_image_counts_only_when_the_attribution_agrees(share_hi, side):
    # a model that misperceives the same way with and without the question repeats its image-alone answer too
    v = _v(follows_text=stat(0.3, 0.2, 0.4), follows_image=stat(0.45, 0.3, 0.6), share=stat(share_hi - 0.05, 0.3,
                                                                                              share_hi))
    assert v["dominant_modality"] == side
    v = _v(follows_text=stat(0.05, 0.0, 0.1), follows_image=stat(0.45, 0.3, 0.6), share=stat(0.55, 0.5, 0.6))
    assert v["dominant_modality"] == "balanced"


@pytest.mark.parametrize("lo, hi, side", [(SHARE_EXTREME + 0.01, 0.95, "language"), (SHARE_EXTREME, 0.95, "balanced"),
                                          (0.05, 1 - SHARE_EXTREME - 0.01, "vision"),
                                          (0.05, 1 - SHARE_EXTREME, "balanced")])
def test_an_extreme_share_decides_when_the_conflicts_do_not(lo, hi, side):
    v = _v(follows_text=stat(0.05, 0.0, 0.1), follows_image=stat(0.05, 0.0, 0.1), share=stat((lo + hi) / 2, lo, hi))
    assert v["dominant_modality"] == side
    assert v["severity"] == ("none" if side == "balanced" else "severe")


def test_a_mid_scale_share_does_not_override_the_conflicts():
    # the p90 zoo model's share reads like an unbiased model's on some builds; the conflicts decide
    v = _v(follows_text=stat(0.01, 0.0, 0.03), follows_image=stat(0.0, 0.0, 0.0), share=stat(0.62, 0.57, 0.67))
    assert (v["dominant_modality"], v["severity"]) == ("balanced", "none")


def test_an_extreme_share_raises_the_severity_on_its_side():
    v = _v(follows_text=stat(0.5, 0.4, 0.6), follows_image=stat(0.1), share=stat(0.9, 0.85, 0.95))
    assert (v["severity"], v["evidence"]) == ("severe", ["modality_shapley", "conflict"])
    assert "on 50% [40, 60] of 100 conflicts" in verdict_sentence({"verdict": v})


def test_an_extreme_share_wins_over_conflicts_that_point_the_other_way():
    # a model that cannot read (share 0.0) whose answers happen to repeat the question-alone ones
    v = _v(follows_text=stat(0.5, 0.4, 0.6), follows_image=stat(0.05, 0.0, 0.1), share=stat(0.01, 0.0, 0.02))
    assert (v["dominant_modality"], v["severity"]) == ("vision", "severe")
    assert "language" in v["note"]


@pytest.mark.parametrize("n, rests_on", [(MIN_CONFLICTS, "conflict"), (MIN_CONFLICTS - 1, "modality_shapley")])
def test_too_few_conflicts_fall_back_to_the_share(n, rests_on):
    v = _v(follows_text=stat(0.9, 0.5, 1.0), follows_image=stat(0.0), share=stat(0.45, 0.40, 0.50), n_text=n,
           n_image=n)
    assert v["rests_on"] == rests_on
    assert v["dominant_modality"] == ("language" if n >= MIN_CONFLICTS else "balanced")


@pytest.mark.parametrize("ci, dominant, leaning", [
    ((0.56, 0.70), "language", None), ((0.55, 0.66), "balanced", "language"), ((0.45, 0.55), "balanced", None),
    ((0.30, 0.44), "vision", None), ((0.40, 0.49), "balanced", "vision")])
def test_share_only_verdict_and_its_leaning(ci, dominant, leaning):
    v = _v(share=stat(sum(ci) / 2, *ci))
    assert (v["dominant_modality"], v["leaning"], v["rests_on"]) == (dominant, leaning, "modality_shapley")
    assert v["severity"] == ("none" if dominant == "balanced" else None)  # a mid-scale share cannot rate severity
    label = verdict_label(v)
    assert label == (f"balanced, leaning {leaning}" if leaning else "balanced" if dominant == "balanced"
                     else f"{dominant}-reliant")
    assert ("leans on" in verdict_sentence({"verdict": v})) == (leaning is not None)


@pytest.mark.parametrize("rate, label", [(0.2, "slightly language-reliant"), (0.5, "language-reliant"),
                                         (0.9, "language-dominant")])
def test_labels_and_sentence_say_how_often_it_follows_the_wording(rate, label):
    v = _v(follows_text=stat(rate, rate - 0.08, rate + 0.08), follows_image=stat(0.05), share=stat(0.6))
    assert verdict_label(v) == label
    sentence = verdict_sentence({"verdict": v})
    assert f"on {100 * rate:.0f}% [{100 * (rate - 0.08):.0f}, {100 * (rate + 0.08):.0f}] of 100 conflicts" in sentence


def test_no_evidence_no_verdict():
    v = verdict({}, 0.05)
    assert v["dominant_modality"] is None and verdict_label(v) == "none"
    assert verdict_sentence({"verdict": v}).startswith("No verdict")
