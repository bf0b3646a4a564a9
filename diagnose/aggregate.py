"""Per-sample records -> ``summary.json``: means with bootstrap intervals, per-category tables, and the verdict."""

from __future__ import annotations

from mbias.stats import bootstrap_mean

SCHEMA_VERSION = 1


def verdict(probes_summary: dict, margin: float) -> dict:
    """Dominant modality from the language share's 95% interval: above 0.5 + margin -> language, below
    0.5 - margin -> vision, otherwise balanced. Rests on modality_shapley if it ran, else on mm_shap's T-SHAP."""
    rule = (f"language if the 95% interval of the language share lies above {0.5 + margin:.2f}, vision if it "
            f"lies below {0.5 - margin:.2f}, otherwise balanced")
    if "modality_shapley" in probes_summary:
        stat, probe = probes_summary["modality_shapley"]["language_share"], "modality_shapley"
    elif "mm_shap" in probes_summary:
        stat, probe = probes_summary["mm_shap"]["t_shap"], "mm_shap"
    else:
        return {"dominant_modality": None, "language_share": None, "ci95": [None, None], "rests_on": None,
                "margin": margin, "rule": rule, "note": "no share probe (modality_shapley or mm_shap) was run"}
    lo, hi = stat["ci95"]
    if stat["mean"] is None:
        dominant = None
    elif lo > 0.5 + margin:
        dominant = "language"
    elif hi < 0.5 - margin:
        dominant = "vision"
    else:
        dominant = "balanced"
    # Within "balanced", say which way it leans when the whole interval is on one side of 0.5 (but inside the
    # margin): a model at 0.60 [0.55, 0.66] is not the same finding as one at 0.50 [0.45, 0.55].
    leaning = None
    if dominant == "balanced" and lo is not None:
        leaning = "language" if lo > 0.5 else "vision" if hi < 0.5 else None
    return {"dominant_modality": dominant, "leaning": leaning, "language_share": stat["mean"], "ci95": [lo, hi],
            "rests_on": probe, "margin": margin, "rule": rule, "n": stat["n"]}


def per_category(records: list[dict]) -> dict:
    cats = sorted({r.get("category") for r in records if r.get("category") is not None})
    out = {}
    for cat in cats:
        sub = [r for r in records if r.get("category") == cat]
        groups = [r["image_key"] for r in sub]
        row = {"n": len(sub), "accuracy": bootstrap_mean([r["correct"] for r in sub], groups)}
        if all("modality_shapley" in r["probes"] for r in sub):
            row["language_share"] = bootstrap_mean([r["probes"]["modality_shapley"]["language_share"] for r in sub],
                                                   groups)
        if all("mm_shap" in r["probes"] for r in sub):
            row["t_shap"] = bootstrap_mean([r["probes"]["mm_shap"]["t_shap"] for r in sub], groups)
        if all("gain" in r["probes"].get("ablation", {}) for r in sub):
            row["multimodal_gain"] = bootstrap_mean([r["probes"]["ablation"]["gain"] for r in sub], groups)
        out[cat] = row
    return out


def summarize(records: list[dict], probes: dict, manifest: dict, margin: float) -> dict:
    """The summary.json content (see reports/summary.schema.json)."""
    groups = [r["image_key"] for r in records]
    acc = bootstrap_mean([r["correct"] for r in records], groups)
    probes_summary = {}
    for name, probe in probes.items():
        recs = [r["probes"][name] for r in records if name in r["probes"]]
        if recs:
            probes_summary[name] = probe.summarize(recs, [r["image_key"] for r in records if name in r["probes"]])
    return {
        "schema_version": SCHEMA_VERSION,
        "n_samples": len(records),
        "n_images": len(set(groups)),
        "accuracy": acc["mean"],
        "accuracy_ci95": acc["ci95"],
        "verdict": verdict(probes_summary, margin),
        "probes": probes_summary,
        "per_category": per_category(records),
        "methods": manifest.get("methods", {}),
        "model": manifest.get("model"),
        "data": manifest.get("data"),
        "provenance": manifest.get("provenance", {}),
        "config": manifest.get("config", {}),
    }
