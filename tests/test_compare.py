"""Comparing two audits on one population: conditional rates (following the wording on conflicts) are counted on
the same samples before and after, whichever model's no-image answers moved, and compare.json says so."""

from __future__ import annotations

import json

from mbias.diagnose.aggregate import summarize
from mbias.probes.conflict import ConflictProbe, conflict_record
from mbias.reports import render_compare
from mbias.reports.compare import comparison, verdict_change

GOLD, CUE, OTHER = "red", "blue", "green"


def _audit(folder, samples, cues=None):
    """An audit folder (results.jsonl + summary.json) from (full answer, no-image answer, image-alone answer) per
    sample; two questions per image, so the intervals resample images."""
    records = []
    for i, (full, text_alone, image_alone) in enumerate(samples):
        rec = {"id": f"s{i}", "index": i, "image_key": f"img{i // 2}", "category": None, "question": "what colour?",
               "answer": GOLD, "prediction": full, "correct": float(full == GOLD)}
        if cues is not None:
            rec["cue_answer"] = cues[i]
        rec["probes"] = {"conflict": conflict_record(full, text_alone, image_alone, GOLD)}
        records.append(rec)
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = summarize(records, {"conflict": ConflictProbe()}, {"model": f"model-{folder.name}", "data": "d.jsonl"},
                        0.05)
    summary["n_samples"] = len(records)
    (folder / "summary.json").write_text(json.dumps(summary))
    return summary


def _row(c, key):
    return next(r for r in c["rows"] if r["key"] == key)


def test_without_a_declared_cue_the_before_models_no_image_answers_define_the_conflicts(tmp_path):
    # before: the question alone answers the cue on 57 of 60; with the image it follows it on 30 of them (53%).
    # after the fine-tune 40 of those no-image answers are right, and the model follows the wording on 10 of the 17
    # left: its own rate reads 59% (up), while on the before model's 57 conflicts it follows on 10 (18%)
    before = [(CUE if i < 30 else GOLD, CUE if i < 57 else GOLD, OTHER if i % 3 == 0 else GOLD) for i in range(60)]
    after = [(CUE if 20 <= i < 30 else GOLD, CUE if 20 <= i < 37 else GOLD, GOLD if i % 3 == 0 else OTHER)
             for i in range(60)]
    own_before, own_after = _audit(tmp_path / "before", before), _audit(tmp_path / "after", after)
    assert own_before["verdict"]["n_text_conflicts"] == 57 and own_after["verdict"]["n_text_conflicts"] == 17
    assert own_after["verdict"]["follows_text"]["mean"] > own_before["verdict"]["follows_text"]["mean"]

    c = comparison(tmp_path / "before", tmp_path / "after")
    follows = _row(c, "follows_text")
    assert follows["before"]["n"] == follows["after"]["n"] == follows["difference"]["n"] == 57
    assert follows["before"]["mean"] == 30 / 57 and follows["after"]["mean"] == 10 / 57
    assert follows["judgement"] == "better" and follows["difference"]["ci95"][1] < 0
    assert follows["population"] == {
        "description": "the 57 samples where the before model's no-image answer is wrong", "n": 57,
        "n_before": 57, "n_after": 57, "conditional": True}
    for key, n in (("correct_text_conflict", 57), ("correct_text_agrees", 3), ("follows_image", 20)):
        row = _row(c, key)
        assert row["before"]["n"] == row["after"]["n"] == n, key
    # image conflicts are the before model's too: after, the model's own image-alone answers are wrong elsewhere
    assert _row(c, "follows_image")["population"]["description"] == (
        "the 20 samples where the before model's image-alone answer is wrong")
    # the verdicts on the compared samples: the before one is the audit's own, the after one is not
    va, vb = c["verdicts"]
    assert va["follows_text"] == own_before["verdict"]["follows_text"]
    assert vb["n_text_conflicts"] == 57 and vb["follows_text"]["mean"] == 10 / 57
    assert "of conflicts (the 57 samples where the before model's no-image answer is wrong), down from 53%" in \
        c["headline"]

    page = render_compare(tmp_path / "before", tmp_path / "after", tmp_path / "cmp" / "compare.html")
    record = json.loads(page.with_suffix(".json").read_text())
    assert record["paired"] is True and record["schema_version"] == 1
    assert record["population_basis"]["conflict"]["before"] == "the before model's no-image and image-alone answers"
    m = next(x for x in record["measures"] if x["key"] == "follows_text")
    assert {"key", "probe", "label", "before", "after", "difference", "judgement", "population"} <= set(m)
    assert (m["probe"], m["judgement"], m["population"]["n"]) == ("conflict", "better", 57)
    assert m["difference"]["ci95"][0] <= m["difference"]["mean"] <= m["difference"]["ci95"][1]
    assert record["measures"][0]["key"] == "correct" and record["measures"][0]["population"]["n"] == 60
    for side, own in (("before", own_before), ("after", own_after)):
        verdicts = record[side]["verdict"]
        assert verdicts["own"] == own["verdict"] and verdicts["on_population"]["n_text_conflicts"] == 57
        assert {"own_label", "on_population_label"} <= set(verdicts)
    assert record["verdict_change"]["decided_by"]["key"] == "follows_text"
    assert record["headline"] == c["headline"]
    for text in (page.read_text(), page.with_suffix(".md").read_text()):
        assert "on the 57 samples where the before model&#39;s no-image answer is wrong" in text or \
            "on the 57 samples where the before model's no-image answer is wrong" in text
        assert "before model" in text


def test_a_declared_cue_defines_the_conflicts_for_both(tmp_path):
    # 60 counter-prior samples (the cue points away from the answer) and 10 where the cue is right; the models'
    # own no-image answers miss on 57 and 50 of them, but both audits are read on the cue's 60 conflicts, where the
    # cue's answer is given 23 times before and 16 after
    cues = [CUE] * 60 + [GOLD] * 10
    before = [(CUE if i < 23 else GOLD, CUE if i < 57 else GOLD, GOLD) for i in range(70)]
    after = [(CUE if i < 16 else OTHER if i == 20 else GOLD, CUE if i < 50 else GOLD, GOLD) for i in range(70)]
    _audit(tmp_path / "before", before, cues)
    _audit(tmp_path / "after", after, cues)
    c = comparison(tmp_path / "before", tmp_path / "after")
    follows = _row(c, "follows_text")
    assert follows["before"]["n"] == follows["after"]["n"] == 60
    assert (follows["before"]["mean"], follows["after"]["mean"]) == (23 / 60, 16 / 60)
    assert follows["population"]["description"] == "the 60 samples whose declared cue answer is wrong"
    assert _row(c, "correct_text_conflict")["after"]["mean"] == 43 / 60  # the OTHER answer is neither
    assert _row(c, "correct_text_agrees")["population"]["description"] == (
        "the 10 samples whose declared cue answer is right")
    assert c["verdicts"][0]["n_text_conflicts"] == c["verdicts"][1]["n_text_conflicts"] == 60

    page = render_compare(tmp_path / "before", tmp_path / "after", tmp_path / "cmp.html")
    record = json.loads((tmp_path / "cmp.json").read_text())
    assert record["population_basis"]["conflict"]["after"].startswith("the data's declared cue answers")
    assert next(m for m in record["measures"] if m["key"] == "follows_text")["population"]["n"] == 60
    md = (tmp_path / "cmp.md").read_text()
    assert "(on the 60 samples whose declared cue answer is wrong)" in md and "declared cue answers" in md
    assert "on the 60 samples whose declared cue answer is wrong" in page.read_text()


def test_audits_of_different_samples_say_their_conflicts_are_not_the_same_samples(tmp_path):
    cues = [CUE] * 60
    _audit(tmp_path / "before", [(CUE if i < 20 else GOLD, CUE, GOLD) for i in range(60)], cues)
    _audit(tmp_path / "after", [(CUE if i < 10 else GOLD, CUE, GOLD) for i in range(40)], cues[:40])
    c = comparison(tmp_path / "before", tmp_path / "after")
    follows = _row(c, "follows_text")
    assert not c["paired"] and (follows["before"]["n"], follows["after"]["n"]) == (60, 40)
    assert follows["population"]["n"] is None and follows["population"]["description"] == (
        "different samples: before, the 60 samples whose declared cue answer is wrong; after, the 40 samples whose "
        "declared cue answer is wrong")
    assert c["population"].startswith("The audits cover different samples")
    assert "by the data's declared cue answers" in c["population"]
    # unpaired, the after audit alone reads balanced (10 of 40), but the difference cannot tell: no new label
    text = c["change"]["text"]
    assert text.startswith("Verdict: no clear change from slightly to moderately language-reliant (the difference "
                           "in following the wording, -8 points [") and text.endswith("includes 0).")
    assert c["change"]["after"] == "balanced" and "balanced" not in c["headline"]


def _verdict(severity, rests_on="conflict", side="language"):
    return {"dominant_modality": side, "severity": severity, "rests_on": rests_on, "evidence": [rests_on]}


def _follows_row(mean, lo, hi):
    return {"key": "follows_text", "probe": "conflict", "measure": "follows the wording", "rate": True,
            "difference": {"mean": mean, "ci95": [lo, hi]}, "clear": not lo <= 0 <= hi}


def test_the_verdict_changes_only_when_the_deciding_difference_is_clear():
    change = verdict_change([_follows_row(0.05, -0.04, 0.14)], _verdict("slight"), _verdict("severe"))
    assert change["changed"] is False
    assert change["text"] == ("Verdict on these samples: no clear change from slightly language-reliant (the paired difference in "
                              "following the wording, +5 points [-4, +14], includes 0).")
    assert "dominant" not in change["text"]  # the after label is never printed beside "no clear change"
    change = verdict_change([_follows_row(0.3, 0.2, 0.4)], _verdict("slight"), _verdict("severe"))
    assert change["changed"] is True and change["text"] == (
        "Verdict on these samples: slightly language-reliant before, language-dominant after (following the wording +30 points "
        "[+20, +40]).")
    change = verdict_change([_follows_row(0.3, 0.2, 0.4)], _verdict("moderate"), _verdict("moderate"))
    assert change["text"] == "Verdict on these samples: language-reliant before and after." and not change["changed"]
    # a share-only verdict is decided by the share's difference
    share = {"key": "language_share", "probe": "modality_shapley", "measure": "language share", "rate": False,
             "difference": {"mean": -0.02, "ci95": [-0.05, 0.01]}, "clear": False}
    change = verdict_change([_follows_row(0.3, 0.2, 0.4), share],
                            {**_verdict(None, "modality_shapley"), "dominant_modality": "balanced"},
                            _verdict(None, "modality_shapley"))
    assert change["decided_by"]["key"] == "language_share" and change["text"].startswith(
        "Verdict on these samples: no clear change from balanced (the paired difference in the language share, -0.02")


def test_a_jsonl_cue_answer_reaches_the_example(tmp_path):
    from PIL import Image

    from mbias.data import load_data

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "1", "image": "x.png", "question": "q", "answer": "a",
                                                  "cue_answer": "b"}) + "\n")
    assert load_data(str(tmp_path / "d.jsonl")).examples[0].meta["cue_answer"] == "b"


def test_an_audit_of_a_synthetic_split_records_its_cue_and_compares_on_it(tiny_model_dir, tmp_path):
    from mbias.cli import main

    a, b = tmp_path / "a", tmp_path / "b"
    for out, baseline in ((a, "blank"), (b, "noise")):
        assert main(["audit", "--model", tiny_model_dir("llava"), "--data", "synth:shapes-p90/test-cp", "--out",
                     str(out), "--max-samples", "4", "--probes", "conflict", "--no-progress", "--image-baseline",
                     baseline, "--no-report"]) == 0
    records = [json.loads(line) for line in (a / "results.jsonl").read_text().splitlines()]
    assert all(r["cue_answer"] and r["cue_answer"] != r["answer"] for r in records)  # counter-prior: cue wrong
    assert main(["report", str(a), "--compare", str(b), "--out", str(tmp_path / "cmp.html")]) == 0
    record = json.loads((tmp_path / "cmp.json").read_text())
    follows = next(m for m in record["measures"] if m["key"] == "follows_text")
    assert follows["population"]["description"] == "the 4 samples whose declared cue answer is wrong"
