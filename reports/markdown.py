"""report.md (the HTML report's content as Markdown) and model_card.md (a HuggingFace model-index block)."""

from __future__ import annotations

import json

from mbias.reports import content


def _md_escape(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(rows, header) -> list[str]:
    out = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return out


def render_markdown(summary: dict, plot_files: dict[str, str]) -> str:
    v = summary["verdict"]
    lines = [f"# Modality-bias audit: {content.model_label(summary)}", "", f"Data: `{summary.get('data')}`, "
             f"{summary['n_samples']} samples. Accuracy {content.fmt({'mean': summary['accuracy'], 'ci95': summary.get('accuracy_ci95')})}.",
             "", f"**Verdict: {content.verdict_label(v)}.** {content.verdict_sentence(summary)}",
             f"Rests on: {', '.join(v.get('evidence') or []) or 'nothing'}. Rule: {v['rule']}.", ""]
    for sec in content.sections(summary):
        lines += [f"## {sec.title}", "", f"*{sec.definition}*", ""]
        lines += _table(sec.rows, ["measure", "value [95% interval]"])
        if sec.plot in plot_files:
            lines += ["", f"![{sec.title}]({plot_files[sec.plot]})"]
        if sec.note:
            lines += ["", sec.note]
        lines.append("")
    cols, rows = content.category_table(summary)
    if rows:
        lines += ["## By category", ""] + _table(rows, cols) + [""]
    if summary.get("examples"):
        lines += ["## Examples", ""]
        for ex in summary["examples"]:
            toks = " ".join(f"{t.strip() or '␣'}({p:+.2f})" for t, p in zip(ex["tokens"], ex["token_phi"],
                                                                           strict=True))
            lines.append(f"- `{_md_escape(ex['id'])}`: gold **{_md_escape(ex['answer'])}**, model "
                         f"**{_md_escape(ex['prediction'])}**; token attributions: {_md_escape(toks)}")
        lines.append("")
    lines += ["## Method details", ""]
    for title, info in content.method_rows(summary):
        details = {k: val for k, val in info.items() if k != "definition"}
        lines += [f"**{title}**", "", "```json", json.dumps(details, indent=1), "```", ""]
    lines += ["## Provenance", ""] + _table(content.provenance_rows(summary), ["", ""]) + [""]
    return "\n".join(lines)


def render_model_card(summary: dict) -> str:
    """A model-card section with a HuggingFace ``model-index`` block carrying the headline numbers."""
    import yaml

    v = summary["verdict"]
    metrics = [{"type": "accuracy", "value": round(summary["accuracy"], 4),
                "name": f"Accuracy (95% CI {summary['accuracy_ci95'][0]:.3f}-{summary['accuracy_ci95'][1]:.3f})"}]
    ms = summary["probes"].get("modality_shapley")
    if ms and ms["language_share"]["mean"] is not None:
        lo, hi = ms["language_share"]["ci95"]
        metrics.append({"type": "language_share", "value": round(ms["language_share"]["mean"], 4),
                        "name": f"Language share, modality Shapley (95% CI {lo:.3f}-{hi:.3f})"})
    mm = summary["probes"].get("mm_shap")
    if mm and mm["t_shap"]["mean"] is not None:
        lo, hi = mm["t_shap"]["ci95"]
        metrics.append({"type": "t_shap", "value": round(mm["t_shap"]["mean"], 4),
                        "name": f"T-SHAP, MM-SHAP (95% CI {lo:.3f}-{hi:.3f})"})
    cf = summary["probes"].get("conflict")
    if cf and cf["follows_text"]["mean"] is not None:
        lo, hi = cf["follows_text"]["ci95"]
        metrics.append({"type": "follows_wording", "value": round(cf["follows_text"]["mean"], 4),
                        "name": f"Follows the wording over the image on conflicts (95% CI {lo:.3f}-{hi:.3f})"})
    ab = summary["probes"].get("ablation")
    if ab and "multimodal_gain" in ab:
        lo, hi = ab["multimodal_gain_ci95"]
        metrics.append({"type": "multimodal_gain", "value": round(ab["multimodal_gain"], 4),
                        "name": f"Multimodal gain, accuracy full minus no image (95% CI {lo:.3f}-{hi:.3f})"})
    for m in metrics:
        m["verified"] = False
    block = {}
    if summary.get("adapter"):
        block["base_model"] = str(summary["adapter"].get("base_model") or summary.get("model"))
    block["model-index"] = [{"name": content.model_label(summary), "results": [{
        "task": {"type": "visual-question-answering", "name": "Modality reliance audit (mbias)"},
        "dataset": {"name": str(summary.get("data")), "type": str(summary.get("data"))},
        "metrics": metrics}]}]
    return "\n".join([
        "---", yaml.safe_dump(block, sort_keys=False).strip(), "---", "",
        "## Modality reliance", "",
        f"Audited with mbias: `{content.model_label(summary)}` on `{summary.get('data')}` "
        f"({summary['n_samples']} samples). Verdict: **{content.verdict_label(v)}**. "
        f"{content.verdict_sentence(summary)} Rule: {v['rule']}.",
        "", "See the full report (report.html) for per-probe results, intervals and method details.", ""])
