"""Compare two audits (before/after): what changed, by how much, with intervals, and whether that is better.

When both audits cover the same samples (same ids) the difference is paired: per-sample differences, bootstrapped
by image. Otherwise the two means are bootstrapped independently. Each measure has a direction: accuracy up is
better, following the wording (or the image) on conflicts down is better, and a share is better when it moves
away from the side the *before* verdict found dominant (towards the image for a language-reliant model).
"""

from __future__ import annotations

import html
from pathlib import Path

from mbias.reports import _load_summary, _records, plots
from mbias.reports.content import fmt, model_label, pct, verdict_label, verdict_sentence
from mbias.reports.html import CSS
from mbias.stats import bootstrap_diff, bootstrap_mean

UP, DOWN, AWAY = "up", "down", "away"  # better when it rises / falls / moves away from the dominant side


def _probe(r: dict, probe: str, key: str):
    return r["probes"].get(probe, {}).get(key)


MEASURES = [  # (key, label, getter over a per-sample record, better direction or None, rate shown in %)
    ("accuracy", "accuracy", lambda r: r.get("correct"), UP, False),
    ("follows_text", "follows the wording over the image (wording conflicts)",
     lambda r: _probe(r, "conflict", "follows_text"), DOWN, True),
    ("follows_image", "gives the image-alone answer over the question (image conflicts)",
     lambda r: _probe(r, "conflict", "follows_image"), DOWN, True),
    ("language_share", "language share (modality Shapley)", lambda r: _probe(r, "modality_shapley", "language_share"),
     AWAY, False),
    ("t_shap", "T-SHAP (MM-SHAP)", lambda r: _probe(r, "mm_shap", "t_shap"), AWAY, False),
    ("multimodal_gain", "multimodal gain (accuracy full - no image)", lambda r: _probe(r, "ablation", "gain"), UP,
     False),
    ("acc_no_image", "accuracy, no image", lambda r: _probe(r, "ablation", "acc_no_image"), None, False),
    ("acc_no_text", "accuracy, question masked", lambda r: _probe(r, "ablation", "acc_no_text"), None, False),
    ("acc_swapped_image", "accuracy, swapped image", lambda r: _probe(r, "ablation", "acc_swapped_image"), None,
     False),
    ("image_auc", "degradation AUC, image", lambda r: _probe(r, "degradation", "image_auc"), None, False),
    ("text_auc", "degradation AUC, text", lambda r: _probe(r, "degradation", "text_auc"), None, False),
    ("attention", "attention on image tokens", lambda r: _probe(r, "attention", "image_attention_share"), None,
     False),
]


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
    for key, label, get, direction, rate in MEASURES:
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
        judgement = _judge(diff, direction, dominant_before)
        rows.append({"key": key, "measure": label, "before": a, "after": b, "difference": diff, "rate": rate,
                     "judgement": judgement, "clear": judgement != "no clear change"})
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
    for row in (r for r in rows if r["key"] in ("follows_text", "accuracy", "language_share")):
        if row["after"]["mean"] is None or row["before"]["mean"] is None:
            continue
        after = f"{100 * row['after']['mean']:.0f}%" if row["rate"] else f"{row['after']['mean']:.2f}"
        before = f"{100 * row['before']['mean']:.0f}%" if row["rate"] else f"{row['before']['mean']:.2f}"
        name = {"follows_text": "follows the wording on conflicts", "accuracy": "accuracy",
                "language_share": "language share"}[row["key"]]
        if not row["clear"]:
            parts.append(f"{name} {after}, no clear change from {before} ({_change(row)})")
        else:
            way = "down" if row["difference"]["mean"] < 0 else "up"
            parts.append(f"{name} {after}, {way} from {before} ({_change(row)}, {row['judgement']})")
    verdicts = f"verdict {verdict_label(va)} before, {verdict_label(vb)} after"
    return ("After: " + "; ".join(parts) + f". {verdicts[0].upper()}{verdicts[1:]}.") if parts else \
        f"{verdicts[0].upper()}{verdicts[1:]}."


def _figures(sa: dict, sb: dict, recs_a, recs_b) -> list[tuple[str, bytes | None, bytes | None]]:
    return [("Accuracy under counterfactual inputs", plots.ablation(sa), plots.ablation(sb)),
            ("Per-sample language share", plots.share_distribution(recs_a), plots.share_distribution(recs_b))]


def comparison(a: Path, b: Path) -> dict:
    """Both summaries and records, the measure rows, whether they are paired, and the headline sentence."""
    sa, sb = _load_summary(a), _load_summary(b)
    recs_a, recs_b = _records(a), _records(b)
    rows, paired = compare_rows(recs_a, recs_b, sa["verdict"].get("dominant_modality"))
    return {"before": sa, "after": sb, "records": (recs_a, recs_b), "rows": rows, "paired": paired,
            "headline": headline(rows, sa["verdict"], sb["verdict"])}


def write_compare(a: Path, b: Path, out: Path | None) -> Path:
    c = comparison(a, b)
    sa, sb, rows, paired, lead = c["before"], c["after"], c["rows"], c["paired"], c["headline"]
    va, vb = sa["verdict"], sb["verdict"]
    recs_a, recs_b = c["records"]
    target = out or (a / "compare.html")
    if target.suffix != ".html":
        target.mkdir(parents=True, exist_ok=True)
        target = target / "compare.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    how = "paired over the same samples" if paired else "independent samples"
    e = html.escape
    table = ["<table><tr><th>measure</th><th>before</th><th>after</th><th>after - before [95% CI]</th>"
             "<th></th></tr>"]
    for r in rows:
        mark = {"better": "ok", "worse": "bad"}.get(r["judgement"], "sub")
        table.append(f"<tr><td>{e(r['measure'])}</td><td>{e(_value(r['before'], r['rate']))}</td>"
                     f"<td>{e(_value(r['after'], r['rate']))}</td><td>{e(_change(r))}</td>"
                     f"<td class=\"{mark}\"><b>{e(r['judgement'])}</b></td></tr>")
    table.append("</table>")
    figures = []
    for title, before, after in _figures(sa, sb, recs_a, recs_b):
        if before and after:
            figures.append(f"<section><h2>{e(title)}</h2><div class=\"pair\"><figure><figcaption>before"
                           f"</figcaption><img class=\"plot\" src=\"{plots.data_uri(before)}\" alt=\"{e(title)}, "
                           f"before\"></figure><figure><figcaption>after</figcaption><img class=\"plot\" src=\""
                           f"{plots.data_uri(after)}\" alt=\"{e(title)}, after\"></figure></div></section>")

    def card(title, folder, summary, v):
        kind = v.get("dominant_modality") or "none"
        label = verdict_label(v)
        return (f"<div class=\"verdict {kind}\"><div class=\"sub\" style=\"color:#fffc\">{title}: "
                f"{e(model_label(summary))} &middot; {summary['n_samples']} samples &middot; {e(str(folder))}</div>"
                f"<div class=\"big\">{e(label[0].upper() + label[1:])}</div><p>{e(verdict_sentence(summary))}</p>"
                "</div>")

    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>mbias comparison: "
            f"{e(model_label(sb))}</title><style>{CSS}.pair{{display:flex;gap:12px}}.pair figure{{margin:0;flex:1}}"
            ".pair img{width:100%}.twocol{display:grid;grid-template-columns:1fr 1fr;gap:12px}</style></head>"
            "<body><main><div class=\"sub\">mbias before / after</div>"
            f"<h1>{e(model_label(sb))}</h1><div class=\"sub\">data {e(str(sb.get('data')))}</div>"
            f"<p class=\"lead\"><b>{e(lead)}</b></p>"
            f"<div class=\"twocol\">{card('before', a, sa, va)}{card('after', b, sb, vb)}</div>"
            f"<section><h2>Every measure</h2><p class=\"note\">Differences are {e(how)}. \"better\" and \"worse\" "
            "follow each measure's direction (accuracy up; following the wording or the image on conflicts down; a "
            "share away from the side found dominant before); \"no clear change\" when the 95% interval includes "
            f"zero.</p>{''.join(table)}</section>{''.join(figures)}</main></body></html>")
    target.write_text(page, encoding="utf-8")
    md = ["# Before / after", "", f"**{lead}**", "",
          f"before: `{a}` ({model_label(sa)}, {sa['n_samples']} samples); after: `{b}` ({model_label(sb)}, "
          f"{sb['n_samples']} samples); differences {how}.", "",
          f"Verdict before: **{verdict_label(va)}**. {verdict_sentence(sa)}", "",
          f"Verdict after: **{verdict_label(vb)}**. {verdict_sentence(sb)}", "",
          "| measure | before | after | after - before [95% CI] | |", "|---|---|---|---|---|"]
    md += [f"| {r['measure']} | {_value(r['before'], r['rate'])} | {_value(r['after'], r['rate'])} | {_change(r)} | "
           f"{r['judgement']} |" for r in rows]
    target.with_suffix(".md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return target
