"""report.html: one self-contained page (plots embedded as data URIs, no network), verdict first.

Every piece of dataset text (questions, answers, categories, ids, tokens) goes through ``html.escape``.
"""

from __future__ import annotations

import html
import json

from mbias.reports import content, plots

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
main{max-width:980px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.15rem;margin:2rem 0 .4rem;border-bottom:1px solid #dde1e7;
padding-bottom:.3rem}.sub{color:#5c6475;font-size:.9rem}
.verdict{border-radius:10px;padding:18px 22px;margin:18px 0;color:white}
.verdict.language{background:#b4452f}.verdict.vision{background:#2f6690}.verdict.balanced{background:#4a5568}
.verdict.none{background:#6b7280}.verdict .big{font-size:1.6rem;font-weight:650}.verdict p{margin:.4rem 0 0}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}.card{background:white;border-radius:8px;padding:10px 14px;
box-shadow:0 1px 2px #0001;min-width:150px}.card .k{font-size:.78rem;color:#5c6475}.card .v{font-size:1.1rem;
font-weight:600}section{background:white;border-radius:10px;padding:6px 20px 16px;margin:14px 0;
box-shadow:0 1px 2px #0001}.def{color:#3d4556;font-style:italic}table{border-collapse:collapse;width:100%;
font-size:.9rem}td,th{padding:5px 8px;border-bottom:1px solid #eceff3;text-align:left;vertical-align:top}
th{color:#5c6475;font-weight:600}img.plot{max-width:100%;margin-top:8px}.note{color:#5c6475;font-size:.85rem}
.ex{display:flex;gap:16px;align-items:flex-start;border-top:1px solid #eceff3;padding:12px 0}.ex img{width:300px}
.tok{padding:1px 2px;border-radius:3px;margin:0 1px;display:inline-block}.ok{color:#17803d}.bad{color:#b4452f}
code{font-size:.85rem;background:#f0f2f5;padding:1px 4px;border-radius:3px}
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _table(rows, header=None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _token_colour(value: float, vmax: float) -> str:
    t = max(-1.0, min(1.0, value / vmax)) if vmax else 0.0
    r, g, b = (200, 60, 45) if t > 0 else (45, 100, 160)
    return f"rgba({r},{g},{b},{abs(t) * 0.75:.2f})"


def _example_html(ex: dict, overlay_uri: str) -> str:
    vmax = max([abs(v) for v in ex["token_phi"] + ex["patch_phi"]] + [1e-9])
    tokens = "".join(f'<span class="tok" style="background:{_token_colour(v, vmax)}" title="phi={v:.3f}">'
                     f"{_e(t)}</span>" for t, v in zip(ex["tokens"], ex["token_phi"], strict=True))
    mark = '<span class="ok">correct</span>' if ex["correct"] else '<span class="bad">wrong</span>'
    tshap = "n/a" if ex.get("t_shap") is None else f"{ex['t_shap']:.2f}"
    return (f'<div class="ex"><img src="{overlay_uri}" alt="image {_e(ex["id"])} with patch attributions">'
            f"<div><div class=\"sub\">{_e(ex['id'])} &middot; {_e(ex.get('category') or '')}</div>"
            f"<p>{tokens}</p><p>gold <b>{_e(ex['answer'])}</b>, model <b>{_e(ex['prediction'])}</b> ({mark}); "
            f"T-SHAP {tshap}</p></div></div>")


def render_html(summary: dict, figures: dict[str, bytes], overlays: list[bytes]) -> str:
    v = summary["verdict"]
    kind = v.get("dominant_modality") or "none"
    label = content.verdict_label(v)
    title = "No verdict" if kind == "none" else label[0].upper() + label[1:]
    evidence = ", ".join(v.get("evidence") or [])
    cards = [("samples", f"{summary['n_samples']} ({summary.get('n_images', '?')} images)"),
             ("accuracy", content.fmt({"mean": summary["accuracy"], "ci95": summary.get("accuracy_ci95")}))]
    ab = summary["probes"].get("ablation", {})
    if "multimodal_gain" in ab:
        cards.append(("multimodal gain", content.fmt({"mean": ab["multimodal_gain"],
                                                       "ci95": ab["multimodal_gain_ci95"]})))
    if "mm_shap" in summary["probes"]:
        cards.append(("T-SHAP", content.fmt(summary["probes"]["mm_shap"]["t_shap"])))
    model = content.model_label(summary)
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>mbias audit: "
             f"{_e(model)}</title><style>{CSS}</style></head><body><main>",
             f"<div class=\"sub\">mbias modality-bias audit</div><h1>{_e(model)}</h1>",
             f"<div class=\"sub\">data {_e(summary.get('data'))}</div>",
             f"<div class=\"verdict {kind}\"><div class=\"big\">{title}</div>"
             f"<p>{_e(content.verdict_sentence(summary))}</p><p class=\"sub\" style=\"color:#fffc\">Rests on: "
             f"{_e(evidence or 'nothing')}. Rule: {_e(v['rule'])}.</p></div>",
             "<div class=\"cards\">" + "".join(f"<div class=\"card\"><div class=\"k\">{_e(k)}</div>"
                                               f"<div class=\"v\">{_e(val)}</div></div>" for k, val in cards)
             + "</div>"]
    for sec in content.sections(summary):
        parts.append(f"<section><h2>{_e(sec.title)}</h2><p class=\"def\">{_e(sec.definition)}</p>")
        parts.append(_table(sec.rows))
        if sec.plot and sec.plot in figures:
            parts.append(f"<img class=\"plot\" src=\"{plots.data_uri(figures[sec.plot])}\" alt=\"{_e(sec.title)}\">")
        if sec.note:
            parts.append(f"<p class=\"note\">{_e(sec.note)}</p>")
        parts.append("</section>")
    cols, rows = content.category_table(summary)
    if rows:
        parts.append("<section><h2>By category</h2>" + _table(rows, cols))
        if "per_category" in figures:
            parts.append(f"<img class=\"plot\" src=\"{plots.data_uri(figures['per_category'])}\" "
                         "alt=\"language share per category\">")
        parts.append("</section>")
    if summary.get("examples"):
        parts.append("<section><h2>Examples</h2><p class=\"note\">Question tokens and image cells shaded by their "
                     "MM-SHAP value: red pushes towards the gold answer, blue away from it.</p>")
        for ex, png in zip(summary["examples"], overlays, strict=True):
            parts.append(_example_html(ex, plots.data_uri(png)))
        parts.append("</section>")
    parts.append("<section><h2>Method details</h2>")
    for title, info in content.method_rows(summary):
        details = {k: val for k, val in info.items() if k != "definition"}
        parts.append(f"<p><b>{_e(title)}</b></p><pre style=\"white-space:pre-wrap;font-size:.8rem\">"
                     f"{_e(json.dumps(details, indent=1))}</pre>")
    parts.append("</section><section><h2>Provenance</h2>" + _table(content.provenance_rows(summary)) + "</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)
