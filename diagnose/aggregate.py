"""Per-sample records -> ``summary.json``: means with bootstrap intervals, per-category tables, and the verdict."""

from __future__ import annotations

from mbias.stats import bootstrap_mean
from mbias.verdict import verdict

SCHEMA_VERSION = 1


def per_category(records: list[dict], probes: dict) -> dict:
    """Accuracy and every probe measure declared ``per_category``, per category, with intervals."""
    cats = sorted({r.get("category") for r in records if r.get("category") is not None})
    out = {}
    for cat in cats:
        sub = [r for r in records if r.get("category") == cat]
        groups = [r["image_key"] for r in sub]
        row = {"n": len(sub), "accuracy": bootstrap_mean([r["correct"] for r in sub], groups), "probes": {}}
        for name, probe in probes.items():
            keys = [m.key for m in probe.measures if m.per_category]
            if keys and all(name in r["probes"] for r in sub):
                row["probes"][name] = {k: bootstrap_mean([r["probes"][name].get(k) for r in sub], groups)
                                       for k in keys}
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
        "per_category": per_category(records, probes),
        "methods": manifest.get("methods", {}),
        "model": manifest.get("model"),
        "adapter": manifest.get("adapter"),
        "data": manifest.get("data"),
        "provenance": manifest.get("provenance", {}),
        "config": manifest.get("config", {}),
    }
