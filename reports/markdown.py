"""report.md (the HTML report's content as Markdown, ``templates/report.md.j2``) and model_card.md (a HuggingFace
model card: ``huggingface_hub``'s ``ModelCardData`` with a ``model-index`` of the headline numbers)."""

from __future__ import annotations

import json

from mbias.reports import content
from mbias.reports.render import render


def render_markdown(summary: dict, plot_files: dict[str, str]) -> str:
    v = summary["verdict"]
    examples = [{**ex, "tokens": " ".join(f"{t.strip() or '␣'}({p:+.2f})"
                                          for t, p in zip(ex["tokens"], ex["token_phi"], strict=True))}
                for ex in summary.get("examples", [])]
    return render(
        "report.md.j2", summary=summary, verdict=v, model=content.model_label(summary),
        accuracy=content.fmt({"mean": summary["accuracy"], "ci95": summary.get("accuracy_ci95")}),
        label=content.verdict_label(v), sentence=content.verdict_sentence(summary),
        evidence=", ".join(v.get("evidence") or []), sections=content.sections(summary),
        categories=content.category_table(summary), plot_files=plot_files, examples=examples,
        methods=[(title, json.dumps({k: val for k, val in info.items() if k != "definition"}, indent=1))
                 for title, info in content.method_rows(summary)],
        provenance=content.provenance_rows(summary))


def _split(data: str | None) -> str | None:
    """The split a data reference names, where it names one (synth:NAME/SPLIT, hf:REPO[:CONFIG]:SPLIT)."""
    if not data:
        return None
    if data.startswith("synth:"):
        return data.rsplit("/", 1)[-1]
    if data.startswith("hf:"):
        return data.rsplit(":", 1)[-1]
    return None


def render_model_card(summary: dict) -> str:
    """A model-card section: metadata with a ``model-index`` carrying the headline numbers (each interval in
    the metric's ``args``), then the verdict in words."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    data = str(summary.get("data"))

    def result(metric_type: str, name: str, stat: dict) -> EvalResult:
        return EvalResult(task_type="visual-question-answering", task_name="Modality reliance audit (mbias)",
                          dataset_type=data, dataset_name=data, dataset_split=_split(summary.get("data")),
                          metric_type=metric_type, metric_name=name, metric_value=round(stat["mean"], 4),
                          metric_args={"ci95": [round(x, 4) for x in stat["ci95"]]}, verified=False)

    results = [result("accuracy", "Accuracy", {"mean": summary["accuracy"], "ci95": summary["accuracy_ci95"]})]
    for name, probe_summary in summary["probes"].items():
        for m in content.measures_of(name):
            stat = probe_summary.get(m.key)
            if m.card and stat and stat.get("mean") is not None:
                results.append(result(m.card, m.label, stat))
    adapter = summary.get("adapter")
    card_data = ModelCardData(
        base_model=str(adapter.get("base_model") or summary.get("model")) if adapter else None,
        library_name="peft" if adapter else "transformers", model_name=content.model_label(summary),
        eval_results=results)
    v = summary["verdict"]
    body = (f"## Modality reliance\n\nAudited with mbias: `{content.model_label(summary)}` on `{data}` "
            f"({summary['n_samples']} samples). Verdict: **{content.verdict_label(v)}**. "
            f"{content.verdict_sentence(summary)} Rule: {v['rule']}.\n\nSee the full report (report.html) for "
            "per-probe results, intervals and method details.\n")
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}"))
