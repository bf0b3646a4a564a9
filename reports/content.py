"""The report's content as plain data: headline numbers, probe sections, tables. HTML and Markdown both render it.

Everything here reads summary.json (and results.jsonl for per-sample distributions) only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mbias.display import fmt, pct


def probe_class(name: str):
    """The registered probe class of a summary's probe, or None for one this mbias does not know (a summary
    written by a newer or extended mbias still renders: its numbers appear under its name)."""
    from mbias.probes import PROBES

    return PROBES.get(name) if name in PROBES else None


def probe_title(name: str) -> str:
    cls = probe_class(name)
    return cls.title if cls and cls.title else name


def measures_of(name: str) -> tuple:
    cls = probe_class(name)
    return cls.measures if cls else ()


def has_conflict_evidence(v: dict) -> bool:
    """Whether the verdict rests (in part) on behaviour on conflicts, which the reports put into words."""
    return any((getattr(probe_class(n), "evidence", None) or ("",))[0] == "conflict" for n in v.get("evidence") or [])


@dataclass
class Section:
    key: str
    title: str
    definition: str
    rows: list[tuple[str, str]] = field(default_factory=list)  # (label, formatted value)
    plots: list[str] = field(default_factory=list)  # names of plots in plots/
    note: str = ""


SEVERITY_WORDS = {"slight": "slightly {side}-reliant", "moderate": "{side}-reliant", "severe": "{side}-dominant",
                  # a span: the rate's interval covers two or three bands (mbias/verdict.py, severity)
                  "slight-moderate": "slightly to moderately {side}-reliant",
                  "moderate-severe": "{side}-reliant to {side}-dominant",
                  "slight-severe": "slightly {side}-reliant to {side}-dominant"}


def verdict_label(v: dict) -> str:
    """``language-reliant`` (moderate), ``language-dominant`` (severe), ``slightly vision-reliant``, a span
    (``slightly to moderately language-reliant`` when the rate's interval crosses 0.30), ``balanced``
    (``balanced, leaning language`` when only the share spoke and leans), or ``none``."""
    side = v.get("dominant_modality")
    if side is None:
        return "none"
    if side == "balanced":
        return f"balanced, leaning {v['leaning']}" if v.get("leaning") else "balanced"
    return SEVERITY_WORDS.get(v.get("severity"), "{side}-reliant").format(side=side)


def span_phrase(v: dict) -> str:
    """Why a severity is a span: the deciding rate's interval crosses a cut point between bands ('' otherwise)."""
    from mbias.verdict import SEVERITY

    low, sep, high = (v.get("severity") or "").partition("-")
    if not sep or v.get("rests_on") is None or not has_conflict_evidence(v):
        return ""
    rate = v["follows_text"] if v["dominant_modality"] == "language" else v["follows_image"]
    lo, hi = rate["ci95"]
    cuts = [cut for cut, _ in SEVERITY[:2] if lo < cut <= hi]
    where = " and ".join(f"{100 * c:.0f}%" for c in sorted(cuts))
    return (f"Severity {low} to {high}: the rate's 95% interval [{100 * lo:.0f}, {100 * hi:.0f}] crosses the "
            f"cut{'s' if len(cuts) > 1 else ''} between bands at {where}, so no single band is named.")


def share_phrase(v: dict) -> str:
    if v.get("language_share") is None:
        return ""
    return f"language share {fmt({'mean': v['language_share'], 'ci95': v['ci95']})}"


def verdict_sentence(summary: dict) -> str:
    """The verdict in words a reviewer can check: what the model does on conflicts, then the share."""
    v = summary["verdict"]
    if v.get("dominant_modality") is None:
        return f"No verdict: {v.get('note', 'no share probe was run')}."
    share = share_phrase(v)
    if not has_conflict_evidence(v):
        if v.get("severity") == "severe":  # an extreme share decided on its own
            other = "image" if v["dominant_modality"] == "language" else "question"
            return f"The model barely uses the {other}: {share} (95% interval, {v['rests_on']})."
        word = {"language": "relies mostly on the question text", "vision": "relies mostly on the image",
                "balanced": "uses image and text in balance (no side's interval clears the margin)"}[
            v["dominant_modality"]]
        if v.get("leaning"):
            language = v["leaning"] == "language"
            side, where = ("the question text", "above") if language else ("the image", "below")
            bound = 0.5 + v.get("margin", 0.05) * (1 if language else -1)
            word = (f"leans on {side}, within the margin (the interval lies {where} 0.5 but does not clear "
                    f"{bound:.2f})")
        return (f"The model {word}: {share} (95% interval, {v['rests_on']}; no conflict evidence, so the share "
                "alone decides).")
    words = [f"The model follows the question's wording over the image on {pct(v['follows_text'])} of "
             f"{v['n_text_conflicts']} conflicts (questions that, asked without the image, get a wrong answer); a "
             "model that looks at the image answers them correctly."]
    if v.get("follows_image") and v["follows_image"].get("mean") is not None:
        words.append(f"Where the image alone (question masked) suggests a wrong answer, it gives that answer on "
                     f"{pct(v['follows_image'])} of {v['n_image_conflicts']}.")
    span = span_phrase(v)
    if span:
        words.append(span)
    if share:
        words.append(f"Attribution: {share} (95% interval).")
    if v.get("note"):
        words.append(f"Note: {v['note']}.")
    return " ".join(words)


def sections(summary: dict) -> list[Section]:
    """One section per probe in the summary, in the order the audit ran them, as each probe declares it."""
    methods = summary.get("methods", {})
    out = []
    for name, probe_summary in summary["probes"].items():
        cls = probe_class(name)
        rows = cls.report_rows(probe_summary) if cls else [(k, fmt(v)) for k, v in probe_summary.items()
                                                            if isinstance(v, dict) and "mean" in v]
        out.append(Section(name, probe_title(name), methods.get(name, {}).get("definition", ""), rows,
                           [plot.name for plot in (cls.plots if cls else ())], cls.note if cls else ""))
    return out


def category_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Per-category accuracy and every per-category measure the probes declared."""
    cats = summary.get("per_category") or {}
    columns = []  # (probe, measure)
    for name in summary["probes"]:
        for m in measures_of(name):
            if m.per_category and any(m.key in v.get("probes", {}).get(name, {}) for v in cats.values()):
                columns.append((name, m))
    rows = []
    for cat, v in cats.items():
        row = [str(cat), str(v["n"]), fmt(v["accuracy"])]
        for name, m in columns:
            stat = v.get("probes", {}).get(name, {}).get(m.key)
            row.append(pct(stat) if m.rate else fmt(stat))
        rows.append(row)
    return ["category", "n", "accuracy"] + [m.label for _, m in columns], rows


def adapter_phrase(adapter: dict | None) -> str:
    """``LoRA adapter ft/ (poe, 200 steps)`` for an audited PEFT adapter record, or ''."""
    if not adapter:
        return ""
    kind = {"LORA": "LoRA"}.get(adapter.get("peft_type"), adapter.get("peft_type") or "PEFT")
    kind = ("routed " if adapter.get("routed") else "") + kind
    trained = ", ".join(x for x in (adapter.get("recipe"), f"{adapter['steps']} steps" if adapter.get("steps") else "")
                        if x)
    return f"{kind} adapter {adapter['path']}" + (f" ({trained})" if trained else "")


def model_label(summary: dict) -> str:
    """The audited model as a reader needs it: the base model and, when one was applied, the adapter."""
    adapter = adapter_phrase(summary.get("adapter"))
    label = f"{summary.get('model')} + {adapter}" if adapter else str(summary.get("model"))
    decode = summary.get("decode")
    return f"{label}, decoded with {decode['spec']}" if decode else label


def method_rows(summary: dict) -> list[tuple[str, dict]]:
    return [(probe_title(k), v) for k, v in (summary.get("methods") or {}).items()]


def provenance_rows(summary: dict) -> list[tuple[str, str]]:
    prov = summary.get("provenance") or {}
    rows = [("model", str(summary.get("model")))]
    adapter = summary.get("adapter")
    if adapter:
        rows += [("adapter", adapter_phrase(adapter)), ("adapter base model", str(adapter.get("base_model")))]
        if adapter.get("recipe_config"):
            rows.append(("adapter recipe settings", str(adapter["recipe_config"])))
        if adapter.get("data"):
            rows.append(("adapter training data", str(adapter["data"])))
    if summary.get("decode"):
        rows.append(("decoding", f"{summary['decode']['spec']} (a decode-time fix: every score and generation)"))
    rows += [("data", str(summary.get("data"))),
            ("mbias", f"{prov.get('mbias_version')} (commit {prov.get('git_commit') or 'n/a'})"),
            ("model revision", str(prov.get("model_revision"))), ("device", str(prov.get("device"))),
            ("date", str(prov.get("date"))), ("seed", str((summary.get("config") or {}).get("seed")))]
    rows += [(k, str(v)) for k, v in (prov.get("versions") or {}).items() if v]
    return rows
