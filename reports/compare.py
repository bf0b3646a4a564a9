"""Compare two audits (before/after): what changed, by how much, with intervals, and whether that is better.

When both audits cover the same samples (same ids) the difference is paired: per-sample differences, bootstrapped
by image. Otherwise the two means are bootstrapped independently. The measures are accuracy and every measure the
probes declare (``mbias.probes.Measure``), each with its direction: accuracy up is better, following the wording
(or the image) on conflicts down is better, and a share is better when it moves away from the side the *before*
verdict found dominant (towards the image for a language-reliant model).
"""

from __future__ import annotations

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

ACCURACY = Measure("correct", "accuracy", UP)
HEADLINE = ("follows_text", "correct", "language_share")  # what the headline sentence reports, in this order


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


def compare_rows(recs_a: list[dict], recs_b: list[dict], dominant_before: str | None = None) -> tuple[list[dict], bool]:
    by_a = {r["id"]: r for r in recs_a}
    shared = [r["id"] for r in recs_b if r["id"] in by_a]
    paired = len(shared) == len(recs_a) == len(recs_b) and len(shared) > 0
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
            by_b = {r["id"]: r for r in recs_b}
            diffs = [None if get(by_a[i]) is None or get(by_b[i]) is None else get(by_b[i]) - get(by_a[i])
                     for i in shared]
            diff = bootstrap_mean(diffs, [by_a[i]["image_key"] for i in shared])
        else:
            diff = bootstrap_diff(vb, va)
        judgement = _judge(diff, m.better, dominant_before)
        rows.append({"key": m.key, "probe": probe, "measure": m.label, "before": a, "after": b, "difference": diff,
                     "rate": m.rate, "judgement": judgement, "clear": judgement != "no clear change"})
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


def headline(rows: list[dict], va: dict, vb: dict) -> str:
    """One sentence a reviewer can quote: the key measures after, where they came from, and the verdicts."""
    parts = []
    for key in HEADLINE:
        row = next((r for r in rows if r["key"] == key), None)
        if row is None or row["after"]["mean"] is None or row["before"]["mean"] is None:
            continue
        after = f"{100 * row['after']['mean']:.0f}%" if row["rate"] else f"{row['after']['mean']:.2f}"
        before = f"{100 * row['before']['mean']:.0f}%" if row["rate"] else f"{row['before']['mean']:.2f}"
        name = {"follows_text": "follows the wording on conflicts", "correct": "accuracy",
                "language_share": "language share"}[key]
        if not row["clear"]:
            parts.append(f"{name} {after}, no clear change from {before} ({_change(row)})")
        else:
            way = "down" if row["difference"]["mean"] < 0 else "up"
            parts.append(f"{name} {after}, {way} from {before} ({_change(row)}, {row['judgement']})")
    verdicts = f"Verdict {verdict_label(va)} before, {verdict_label(vb)} after."
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


def comparison(a: Path, b: Path) -> dict:
    """Both summaries and records, the measure rows, whether they are paired, and the headline sentence."""
    sa, sb = _load_summary(a), _load_summary(b)
    recs_a, recs_b = _records(a), _records(b)
    rows, paired = compare_rows(recs_a, recs_b, sa["verdict"].get("dominant_modality"))
    return {"before": sa, "after": sb, "records": (recs_a, recs_b), "rows": rows, "paired": paired,
            "headline": headline(rows, sa["verdict"], sb["verdict"])}


def write_compare(a: Path, b: Path, out: Path | None) -> Path:
    c = comparison(a, b)
    sa, sb = c["before"], c["after"]
    target = out or (a / "compare.html")
    if target.suffix != ".html":
        target.mkdir(parents=True, exist_ok=True)
        target = target / "compare.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**r, "before_text": _value(r["before"], r["rate"]), "after_text": _value(r["after"], r["rate"]),
             "change": _change(r)} for r in c["rows"]]
    sides = []
    for name, folder, s in (("before", a, sa), ("after", b, sb)):
        label = verdict_label(s["verdict"])
        sides.append({"name": name, "verdict": s["verdict"], "label": label[0].upper() + label[1:],
                      "sentence": verdict_sentence(s), "model": model_label(s), "n": s["n_samples"],
                      "heading": f"{name}: {model_label(s)} · {s['n_samples']} samples · {folder}"})
    context = dict(model=model_label(sb), data=sb.get("data"), headline=c["headline"], sides=sides, rows=rows,
                   how="paired over the same samples" if c["paired"] else "independent samples",
                   before_dir=str(a), after_dir=str(b))
    figures = [(title, plots.data_uri(x), plots.data_uri(y)) for title, x, y in _figures(sa, sb, *c["records"])]
    target.write_text(render("compare.html.j2", figures=figures, **context), encoding="utf-8")
    target.with_suffix(".md").write_text(render("compare.md.j2", **context), encoding="utf-8")
    return target
