"""Compare two audits (before/after): each headline measure side by side, with the difference and its interval.

When both audits cover the same samples (same ids) the difference is paired: per-sample differences, bootstrapped
by image. Otherwise the two means are bootstrapped independently.
"""

from __future__ import annotations

import html
from pathlib import Path

from mbias.reports import _load_summary, _records
from mbias.reports.content import fmt, verdict_label

from mbias.stats import bootstrap_diff, bootstrap_mean

MEASURES = [  # (label, getter over a per-sample record)
    ("accuracy", lambda r: r.get("correct")),
    ("language share (modality Shapley)", lambda r: r["probes"].get("modality_shapley", {}).get("language_share")),
    ("T-SHAP (MM-SHAP)", lambda r: r["probes"].get("mm_shap", {}).get("t_shap")),
    ("multimodal gain", lambda r: r["probes"].get("ablation", {}).get("gain")),
    ("accuracy, no image", lambda r: r["probes"].get("ablation", {}).get("acc_no_image")),
    ("accuracy, question masked", lambda r: r["probes"].get("ablation", {}).get("acc_no_text")),
    ("accuracy, swapped image", lambda r: r["probes"].get("ablation", {}).get("acc_swapped_image")),
    ("degradation AUC, image", lambda r: r["probes"].get("degradation", {}).get("image_auc")),
    ("degradation AUC, text", lambda r: r["probes"].get("degradation", {}).get("text_auc")),
    ("attention on image tokens", lambda r: r["probes"].get("attention", {}).get("image_attention_share")),
]


def compare_rows(recs_a: list[dict], recs_b: list[dict]) -> tuple[list[dict], bool]:
    by_a = {r["id"]: r for r in recs_a}
    shared = [r["id"] for r in recs_b if r["id"] in by_a]
    paired = len(shared) == len(recs_a) == len(recs_b) and len(shared) > 0
    rows = []
    for label, get in MEASURES:
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
        rows.append({"measure": label, "before": a, "after": b, "difference": diff,
                     "clear": diff["ci95"][0] is not None and (diff["ci95"][0] > 0 or diff["ci95"][1] < 0)})
    return rows, paired


def write_compare(a: Path, b: Path, out: Path | None) -> Path:
    sa, sb = _load_summary(a), _load_summary(b)
    rows, paired = compare_rows(_records(a), _records(b))
    target = out or (a / "compare.html")
    if target.suffix != ".html":
        target.mkdir(parents=True, exist_ok=True)
        target = target / "compare.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    how = ("paired over the same samples" if paired else "independent samples")
    va, vb = sa["verdict"], sb["verdict"]
    e = html.escape
    table = ["<table><tr><th>measure</th><th>before</th><th>after</th><th>after - before [95% CI]</th></tr>"]
    for r in rows:
        style = ' style="font-weight:600"' if r["clear"] else ""
        table.append(f"<tr{style}><td>{e(r['measure'])}</td><td>{e(fmt(r['before']))}</td>"
                     f"<td>{e(fmt(r['after']))}</td><td>{e(fmt(r['difference']))}</td></tr>")
    table.append("</table>")
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>mbias comparison</title><style>
body{{font-family:system-ui,sans-serif;max-width:900px;margin:24px auto;color:#1d2330}}table{{border-collapse:collapse;
width:100%}}td,th{{padding:6px 8px;border-bottom:1px solid #e5e7eb;text-align:left}}.sub{{color:#5c6475}}</style></head>
<body><h1>Before / after</h1>
<p class="sub">before: {e(str(a))} ({e(sa.get('model'))}, {sa['n_samples']} samples)<br>
after: {e(str(b))} ({e(sb.get('model'))}, {sb['n_samples']} samples)</p>
<p>Verdict before: <b>{e(verdict_label(va))}</b>; after: <b>{e(verdict_label(vb))}</b>.
Differences are {e(how)}; bold rows have a 95% interval that excludes zero.</p>
{''.join(table)}</body></html>"""
    target.write_text(page, encoding="utf-8")
    md = ["# Before / after", "", f"before: `{a}` ({sa['n_samples']} samples), after: `{b}` ({sb['n_samples']} "
          f"samples); differences {how}.", "",
          f"Verdict before: **{verdict_label(va)}**, after: **{verdict_label(vb)}**.", "",
          "| measure | before | after | after - before [95% CI] |", "|---|---|---|---|"]
    md += [f"| {r['measure']} | {fmt(r['before'])} | {fmt(r['after'])} | {fmt(r['difference'])}"
           f"{' *' if r['clear'] else ''} |" for r in rows]
    md += ["", "\\* the interval excludes zero."]
    target.with_suffix(".md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return target
