"""Compare two audits (before/after): what changed, by how much, with intervals, and whether that is better.

When both audits cover the same samples (same ids) the difference is paired: per-sample differences, bootstrapped
by image. Otherwise the two means are bootstrapped independently. The measures are accuracy and every measure the
probes declare (``mbias.probes.Measure``), each with its direction: accuracy up is better, following the wording
(or the image) on conflicts down is better, and a share is better when it moves away from the side the *before*
verdict found dominant (towards the image for a language-reliant model).

A measure defined only on samples that the audited model's own answers pick (following the wording on *its*
wording conflicts) would be counted on different samples before and after: a fine-tune that makes a few no-image
answers right takes them out of its own denominator, and the rate can rise while fewer answers follow the cue.
Each probe with such measures re-derives them on one population for both audits (``Probe.rebase``: for the
``conflict`` probe, the data's declared cue, else the before audit's answers), and everything here, the verdicts
included, reads them there. The page, ``compare.md`` and ``compare.json`` say which samples each rate is on.
"""

from __future__ import annotations

import json
from pathlib import Path

from mbias.probes.base import AWAY, DOWN, UP, Measure
from mbias.reports import _load_summary, _records, plots
from mbias.reports.content import (
    fmt,
    measures_of,
    model_label,
    pct,
    probe_class,
    verdict_label,
    verdict_sentence,
)
from mbias.reports.render import render
from mbias.stats import bootstrap_diff, bootstrap_mean
from mbias.verdict import verdict

ACCURACY = Measure("correct", "accuracy", UP)
HEADLINE = ("follows_text", "correct", "language_share")  # what the headline sentence reports, in this order
SCHEMA_VERSION = 1  # of compare.json


def measures(records: list[dict]) -> list[tuple[str | None, Measure]]:
    """(probe or None for the sample itself, measure) for accuracy and every declared measure of the probes
    these records ran, in the order they ran."""
    probes = list(dict.fromkeys(name for r in records for name in r["probes"]))
    return [(None, ACCURACY)] + [(name, m) for name in probes for m in measures_of(name)]


def _getter(probe: str | None, key: str):
    if probe is None:
        return lambda r: r.get(key)
    return lambda r: r["probes"].get(probe, {}).get(key)


def _judge(diff: dict, direction: str | None, dominant: str | None) -> str:
    """better / worse / no clear change / changed (a measure without a better direction)."""
    lo, hi = diff["ci95"]
    if lo is None or lo <= 0 <= hi:
        return "no clear change"
    if direction == AWAY:  # a share: better away from the side found dominant before
        direction = DOWN if dominant == "language" else UP if dominant == "vision" else None
    if direction is None:
        return "changed"
    return "better" if (diff["mean"] > 0) == (direction == UP) else "worse"


def is_paired(recs_a: list[dict], recs_b: list[dict]) -> bool:
    """Whether both audits cover the same samples (same ids), so differences are per sample."""
    ids_a = {r["id"] for r in recs_a}
    return len(recs_a) == len(recs_b) > 0 and ids_a == {r["id"] for r in recs_b}


def on_one_population(recs_a: list[dict], recs_b: list[dict], paired: bool) -> tuple[list[dict], list[dict], dict]:
    """Both audits' records with every probe's conditional measures re-derived on one population
    (``Probe.rebase``): against the before audit's records of the same samples when ``paired``; otherwise each
    audit against its own records (then only a population the data declares is shared). Returns the records and
    ``{probe: (Rebased before, Rebased after)}``."""
    names = [n for n in dict.fromkeys(n for r in recs_a for n in r["probes"])
             if probe_class(n) is not None and all(n in r["probes"] for r in [*recs_a, *recs_b])]
    by_a = {r["id"]: r for r in recs_a}
    refs_b = [by_a[r["id"]] for r in recs_b] if paired else recs_b
    out_a = [{**r, "probes": dict(r["probes"])} for r in recs_a]
    out_b = [{**r, "probes": dict(r["probes"])} for r in recs_b]
    rebased = {}
    for name in names:
        cls = probe_class(name)
        before = cls.rebase(recs_a, recs_a, "before")
        if before is None:
            continue
        after = cls.rebase(recs_b, refs_b, "before" if paired else "after")
        for out, new in ((out_a, before), (out_b, after)):
            for r, probe_record in zip(out, new.records, strict=True):
                r["probes"][name] = probe_record
        rebased[name] = (before, after)
    return out_a, out_b, rebased


def _population(probe: str | None, key: str, rebased: dict, a: dict, b: dict) -> dict:
    """The samples a row's values are on: in words, and how many each audit has there."""
    pair = rebased.get(probe)
    described = pair and key in pair[0].populations
    if not described:
        words = "every sample with a value" if a["n_missing"] or b["n_missing"] else "every sample"
    elif pair[0].populations[key] == pair[1].populations[key]:
        words = pair[0].populations[key]
    else:
        words = f"different samples: before, {pair[0].populations[key]}; after, {pair[1].populations[key]}"
    return {"description": words, "n": a["n"] if a["n"] == b["n"] else None, "n_before": a["n"], "n_after": b["n"],
            "conditional": bool(described)}


def compare_rows(recs_a: list[dict], recs_b: list[dict], dominant_before: str | None = None,
                 rebased: dict | None = None) -> tuple[list[dict], bool]:
    """One row per measure: before, after, the (paired) difference with its interval and the judgement.
    ``rebased``: what ``on_one_population`` re-derived (the records given are its output), for the rows' words."""
    paired = is_paired(recs_a, recs_b)
    by_b = {r["id"]: r for r in recs_b}
    rows = []
    for probe, m in measures(recs_a):
        get = _getter(probe, m.key)
        va = [get(r) for r in recs_a]
        vb = [get(r) for r in recs_b]
        if all(v is None for v in va) or all(v is None for v in vb):
            continue
        a = bootstrap_mean(va, [r["image_key"] for r in recs_a])
        b = bootstrap_mean(vb, [r["image_key"] for r in recs_b])
        if paired:
            diffs = [None if get(r) is None or get(by_b[r["id"]]) is None else get(by_b[r["id"]]) - get(r)
                     for r in recs_a]
            diff = bootstrap_mean(diffs, [r["image_key"] for r in recs_a])
        else:
            diff = bootstrap_diff(vb, va)
        judgement = _judge(diff, m.better, dominant_before)
        rows.append({"key": m.key, "probe": probe, "measure": m.label, "better": m.better, "before": a, "after": b,
                     "difference": diff, "rate": m.rate, "judgement": judgement,
                     "clear": judgement != "no clear change",
                     "population": _population(probe, m.key, rebased or {}, a, b)})
    return rows, paired


def _value(stat: dict, rate: bool) -> str:
    return pct(stat) if rate else fmt(stat)


def _change(row: dict) -> str:
    d = row["difference"]
    if d["mean"] is None:
        return "n/a"
    lo, hi = d["ci95"]
    if row["rate"]:
        return f"{100 * d['mean']:+.0f} points [{100 * lo:+.0f}, {100 * hi:+.0f}]"
    return f"{d['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _evidence_kind(probe: str | None) -> str:
    return ((getattr(probe_class(probe), "evidence", None) or ("",))[0]) if probe else ""


def deciding_row(rows: list[dict], va: dict, vb: dict) -> dict | None:
    """The row whose paired difference says whether the verdict changed: following the wording when either
    verdict is a language verdict resting on conflicts; else the share (of the probe a verdict rests on, or the
    best-ranked share probe compared)."""
    language = any(v.get("dominant_modality") == "language" and _evidence_kind(v.get("rests_on")) == "conflict"
                   for v in (va, vb))
    if language:
        return next((r for r in rows if r["key"] == "follows_text" and _evidence_kind(r["probe"]) == "conflict"),
                    None)
    named = [n for v in (va, vb) for n in [v.get("rests_on"), *(v.get("evidence") or [])]
             if _evidence_kind(n) == "share"]
    shares = sorted((probe_class(r["probe"]).evidence[1], i, r) for i, r in enumerate(rows)
                    if _evidence_kind(r["probe"]) == "share" and r["key"] == probe_class(r["probe"]).share_key
                    and (not named or r["probe"] in named))
    return shares[0][2] if shares else None


def verdict_change(rows: list[dict], va: dict, vb: dict, paired: bool = True) -> dict:
    """Whether the verdict changed, and the line that says so: a new label only when the difference of the rate
    that decides it has a 95% interval excluding 0; otherwise "no clear change from" the before label (never
    the after label beside it: a label the data cannot tell from the first is not news)."""
    before, after = verdict_label(va), verdict_label(vb)
    row = deciding_row(rows, va, vb)
    decided_by = None if row is None else {"key": row["key"], "probe": row["probe"], "difference": row["difference"],
                                           "clear": row["clear"]}
    changed = before != after and row is not None and row["clear"]
    # paired: both verdicts are read on the compared samples, which can differ from an audit's own verdict
    lead = "Verdict on these samples" if paired else "Verdict"
    if before == after:
        text = f"{lead}: {before} before and after."
    elif changed:
        text = f"{lead}: {before} before, {after} after ({_name(row)} {_change(row)})."
    elif row is None:
        text = f"{lead}: no clear change from {before} (no measure that decides it was compared)."
    else:
        kind = "paired difference" if paired else "difference"
        text = f"{lead}: no clear change from {before} (the {kind} in {_name(row)}, {_change(row)}, includes 0)."
    return {"changed": changed, "before": before, "after": after, "decided_by": decided_by, "text": text}


def _name(row: dict) -> str:
    return {"follows_text": "following the wording", "correct": "accuracy",
            "language_share": "the language share"}.get(row["key"], row["measure"])


def headline(rows: list[dict], va: dict, vb: dict, paired: bool = True) -> str:
    """One sentence a reviewer can quote: the key measures after, where they came from, on which samples the
    conditional ones are, and whether the verdict changed (``verdict_change``)."""
    parts = []
    for key in HEADLINE:
        row = next((r for r in rows if r["key"] == key), None)
        if row is None or row["after"]["mean"] is None or row["before"]["mean"] is None:
            continue
        after = f"{100 * row['after']['mean']:.0f}%" if row["rate"] else f"{row['after']['mean']:.2f}"
        before = f"{100 * row['before']['mean']:.0f}%" if row["rate"] else f"{row['before']['mean']:.2f}"
        if key == "follows_text":
            where = f" ({row['population']['description']})" if row["population"]["conditional"] else ""
            said = f"follows the wording on {after} of conflicts{where}"
        else:
            said = f"{_name(row).removeprefix('the ')} {after}"
        if not row["clear"]:
            parts.append(f"{said}, no clear change from {before} ({_change(row)})")
        else:
            way = "down" if row["difference"]["mean"] < 0 else "up"
            parts.append(f"{said}, {way} from {before} ({_change(row)}, {row['judgement']})")
    verdicts = verdict_change(rows, va, vb, paired)["text"]
    return f"After: {'; '.join(parts)}. {verdicts}" if parts else verdicts


def _figures(sa: dict, sb: dict, recs_a: list[dict], recs_b: list[dict]) -> list[tuple[str, bytes, bytes]]:
    """Every plot the probes declare, drawn for both audits, where both have it."""
    out = []
    for name in sa["probes"]:
        cls = probe_class(name)
        if cls is None or name not in sb["probes"]:
            continue
        for plot in cls.plots:
            pair = [plots.draw(plot, s["probes"][name], [r["probes"][name] for r in recs if name in r["probes"]])
                    for s, recs in ((sa, recs_a), (sb, recs_b))]
            if all(pair):
                out.append((f"{cls.title}: {plot.name.replace('_', ' ')}", *pair))
    return out


def verdict_on(summary: dict, records: list[dict], rebased: dict) -> dict:
    """The audit's verdict with each rebased probe's part of the summary re-aggregated from ``records`` (the
    output of ``on_one_population``): the verdict on the compared samples."""
    probes_summary = dict(summary["probes"])
    groups = [r["image_key"] for r in records]
    for name in rebased:
        probes_summary[name] = probe_class(name)().summarize([r["probes"][name] for r in records], groups)
    return verdict(probes_summary, summary["verdict"]["margin"])


def population_note(rebased: dict, paired: bool) -> str:
    """Which samples the conditional rates are on, for the page."""
    if not rebased:
        return ""
    pairs = list(rebased.values())
    if paired:
        return ("Rates defined only on some samples (conflicts) are read on the same samples for both audits, "
                f"picked by {'; '.join(before.basis for before, _ in pairs)}, as each row says. Each audit's own "
                "report picks its conflicts with its own answers, so its rates can differ from these.")
    bases = "; ".join(f"by {before.basis} in each" if before.basis == after.basis else
                      f"before by {before.basis}, after by {after.basis}" for before, after in pairs)
    return ("The audits cover different samples, so rates defined only on some samples (conflicts) are read on "
            f"each audit's own, picked {bases}, as each row says: they do not count the same samples.")


def comparison(a: Path, b: Path) -> dict:
    """Both summaries and records, the measure rows on one population, whether they are paired, the verdicts
    (each audit's own and on the compared samples), whether the verdict changed, and the headline sentence."""
    return comparison_of(_load_summary(a), _records(a), _load_summary(b), _records(b))


def comparison_of(sa: dict, recs_a: list[dict], sb: dict, recs_b: list[dict]) -> dict:
    """``comparison`` of two audits held in memory (summaries and records; ``mbias.AuditResult.compare``)."""
    paired = is_paired(recs_a, recs_b)
    on_a, on_b, rebased = on_one_population(recs_a, recs_b, paired)
    va, vb = verdict_on(sa, on_a, rebased), verdict_on(sb, on_b, rebased)
    rows, _ = compare_rows(on_a, on_b, va.get("dominant_modality"), rebased)
    return {"before": sa, "after": sb, "records": (recs_a, recs_b), "rows": rows, "paired": paired,
            "rebased": rebased, "verdicts": (va, vb), "change": verdict_change(rows, va, vb, paired),
            "population": population_note(rebased, paired), "headline": headline(rows, va, vb, paired)}


def compare_record(c: dict, a: Path, b: Path) -> dict:
    """compare.json: every measure with its difference and judgement, on which samples, and the verdicts."""
    def side(folder: Path, summary: dict, on_population: dict) -> dict:
        own = summary["verdict"]
        return {"dir": str(folder), "model": model_label(summary), "data": summary.get("data"),
                "n_samples": summary["n_samples"], "verdict": {
                    "own": own, "own_label": verdict_label(own),
                    "on_population": on_population, "on_population_label": verdict_label(on_population)}}

    return {
        "schema_version": SCHEMA_VERSION, "paired": c["paired"],
        "population_basis": {name: {"before": before.basis, "after": after.basis}
                             for name, (before, after) in c["rebased"].items()},
        "before": side(a, c["before"], c["verdicts"][0]), "after": side(b, c["after"], c["verdicts"][1]),
        "measures": [{"key": r["key"], "probe": r["probe"], "label": r["measure"], "rate": r["rate"],
                      "better": r["better"], "before": r["before"], "after": r["after"], "difference": r["difference"],
                      "judgement": r["judgement"], "population": r["population"]} for r in c["rows"]],
        "verdict_change": c["change"], "headline": c["headline"]}


def write_compare(a: Path, b: Path, out: Path | None) -> Path:
    """compare.html, compare.md and compare.json (``out``: the HTML file or a folder; default inside ``a``)."""
    c = comparison(a, b)
    sa, sb = c["before"], c["after"]
    target = out or (a / "compare.html")
    if target.suffix != ".html":
        target.mkdir(parents=True, exist_ok=True)
        target = target / "compare.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**r, "before_text": _value(r["before"], r["rate"]), "after_text": _value(r["after"], r["rate"]),
             "change": _change(r), "population_text": r["population"]["description"]
             if r["population"]["conditional"] else ""} for r in c["rows"]]
    sides = []
    for name, folder, s, on_population in (("before", a, sa, c["verdicts"][0]), ("after", b, sb, c["verdicts"][1])):
        label, compared = verdict_label(s["verdict"]), verdict_label(on_population)
        sides.append({"name": name, "verdict": s["verdict"], "label": label[0].upper() + label[1:],
                      "sentence": verdict_sentence(s), "model": model_label(s), "n": s["n_samples"],
                      "heading": f"{name}: {model_label(s)} · {s['n_samples']} samples · {folder}",
                      "footer": "" if compared == label else f"On the samples compared here: {compared}."})
    context = dict(model=model_label(sb), data=sb.get("data"), headline=c["headline"], sides=sides, rows=rows,
                   how="paired over the same samples" if c["paired"] else "independent samples",
                   population=c["population"], before_dir=str(a), after_dir=str(b))
    figures = [(title, plots.data_uri(x), plots.data_uri(y)) for title, x, y in _figures(sa, sb, *c["records"])]
    target.write_text(render("compare.html.j2", figures=figures, **context), encoding="utf-8")
    target.with_suffix(".md").write_text(render("compare.md.j2", **context), encoding="utf-8")
    target.with_suffix(".json").write_text(json.dumps(compare_record(c, a, b), indent=2) + "\n", encoding="utf-8")
    return target
