"""report.html: one self-contained page (plots embedded as data URIs, no network), verdict first.

The page is ``templates/report.html.j2``; this module turns summary.json's content into its context. Every piece
of dataset text (questions, answers, categories, ids, tokens) is escaped by the template engine.
"""

from __future__ import annotations

import json

from mbias.reports import content, plots
from mbias.reports.render import render


def _token_colour(value: float, vmax: float) -> str:
    t = max(-1.0, min(1.0, value / vmax)) if vmax else 0.0
    r, g, b = (200, 60, 45) if t > 0 else (45, 100, 160)
    return f"rgba({r},{g},{b},{abs(t) * 0.75:.2f})"


def _example(ex: dict, overlay: bytes) -> dict:
    vmax = max([abs(v) for v in ex["token_phi"] + ex["patch_phi"]] + [1e-9])
    return {**ex, "overlay": plots.data_uri(overlay),
            "tokens": [(t, _token_colour(v, vmax), v) for t, v in zip(ex["tokens"], ex["token_phi"], strict=True)],
            "t_shap": "n/a" if ex.get("t_shap") is None else f"{ex['t_shap']:.2f}"}


def headline(v: dict) -> str:
    """The banner's title: ``Language-reliant``, ``Balanced``, ``No verdict``."""
    label = content.verdict_label(v)
    return "No verdict" if label == "none" else label[0].upper() + label[1:]


def cards(summary: dict) -> list[tuple[str, str]]:
    """The numbers under the banner: samples, accuracy, and every measure a probe puts on the model card."""
    out = [("samples", f"{summary['n_samples']} ({summary.get('n_images', '?')} images)"),
           ("accuracy", content.fmt({"mean": summary["accuracy"], "ci95": summary.get("accuracy_ci95")}))]
    for name, probe_summary in summary["probes"].items():
        for m in content.measures_of(name):
            if m.card and m.key in probe_summary:
                stat = probe_summary[m.key]
                out.append((m.label, content.pct(stat) if m.rate else content.fmt(stat)))
    return out


def render_html(summary: dict, figures: dict[str, bytes], overlays: list[bytes]) -> str:
    v = summary["verdict"]
    return render(
        "report.html.j2", summary=summary, verdict=v, model=content.model_label(summary), headline=headline(v),
        sentence=content.verdict_sentence(summary), evidence=", ".join(v.get("evidence") or []),
        cards=cards(summary), sections=content.sections(summary), categories=content.category_table(summary),
        figures={name: plots.data_uri(png) for name, png in figures.items()},
        examples=[_example(ex, png) for ex, png in zip(summary.get("examples", []), overlays, strict=True)],
        methods=[(title, json.dumps({k: val for k, val in info.items() if k != "definition"}, indent=1))
                 for title, info in content.method_rows(summary)],
        provenance=content.provenance_rows(summary))
