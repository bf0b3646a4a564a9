"""The report's content as plain data: headline numbers, probe sections, tables. HTML and Markdown both render it.

Everything here reads summary.json (and results.jsonl for per-sample distributions) only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PROBE_TITLES = {
    "modality_shapley": "Modality Shapley (image vs question)",
    "conflict": "Conflicts: wording against image",
    "mm_shap": "MM-SHAP (question tokens vs image patches)",
    "ablation": "Ablations (counterfactual inputs)",
    "attention": "Attention to image tokens",
    "degradation": "Missing-modality curves",
    "pdm": "Image dependence during generation (PDM)",
}


def fmt(stat, digits: int = 2) -> str:
    """``0.72 [0.68, 0.76]`` from a {mean, ci95} dict, a bare number, or None."""
    if stat is None:
        return "n/a"
    if isinstance(stat, dict):
        if stat.get("mean") is None:
            return "n/a"
        lo, hi = stat.get("ci95") or (None, None)
        if lo is None:
            return f"{stat['mean']:.{digits}f}"
        return f"{stat['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{stat:.{digits}f}"


@dataclass
class Section:
    key: str
    title: str
    definition: str
    rows: list[tuple[str, str]] = field(default_factory=list)  # (label, formatted value)
    plot: str | None = None  # name of a plot in plots/
    note: str = ""


SEVERITY_WORDS = {"slight": "slightly {side}-reliant", "moderate": "{side}-reliant", "severe": "{side}-dominant"}


def verdict_label(v: dict) -> str:
    """``language-reliant`` (moderate), ``language-dominant`` (severe), ``slightly vision-reliant``, ``balanced``
    (``balanced, leaning language`` when only the share spoke and leans), or ``none``."""
    side = v.get("dominant_modality")
    if side is None:
        return "none"
    if side == "balanced":
        return f"balanced, leaning {v['leaning']}" if v.get("leaning") else "balanced"
    return SEVERITY_WORDS.get(v.get("severity"), "{side}-reliant").format(side=side)


def pct(stat: dict | None) -> str:
    """``70% [62, 78]`` from a {mean, ci95} of a rate."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    lo, hi = stat["ci95"]
    return f"{100 * stat['mean']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


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
    evidence = v.get("evidence") or []
    if "conflict" not in evidence:
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
    if share:
        words.append(f"Attribution: {share} (95% interval).")
    if v.get("note"):
        words.append(f"Note: {v['note']}.")
    return " ".join(words)


def sections(summary: dict) -> list[Section]:
    p = summary["probes"]
    methods = summary.get("methods", {})
    out = []

    def definition(name):
        return methods.get(name, {}).get("definition", "")

    if "modality_shapley" in p:
        ms = p["modality_shapley"]
        rows = [("language share", fmt(ms["language_share"])), ("vision share", fmt(ms["vision_share"])),
                ("phi image (mean)", fmt(ms["phi_image"])), ("phi text (mean)", fmt(ms["phi_text"]))]
        for value, label in (("logprob", "raw log-prob"), ("acc", "accuracy")):
            if f"language_share_{value}" in ms:
                rows.append((f"language share, {label}-valued", fmt(ms[f"language_share_{value}"])))
        out.append(Section("modality_shapley", PROBE_TITLES["modality_shapley"], definition("modality_shapley"),
                           rows, "share_distribution", note="value function: " + ", ".join(ms["value_function"])))
    if "conflict" in p:
        cf = p["conflict"]
        out.append(Section("conflict", PROBE_TITLES["conflict"], definition("conflict"), [
            (f"follows the wording over the image ({cf['n_text_conflicts']} wording conflicts)",
             pct(cf["follows_text"])),
            (f"gives the image-alone answer over the question ({cf['n_image_conflicts']} image conflicts)",
             pct(cf["follows_image"])),
            ("accuracy where the question alone gets it wrong", fmt(cf["correct_text_conflict"])),
            ("accuracy where the question alone gets it right", fmt(cf["correct_text_agrees"])),
            ("answered right from the question alone (no image)", fmt(cf["text_alone_accuracy"]))],
            note="A model that looks at the image is as accurate where the question alone is wrong as where it is "
                 "right; the gap between the two accuracies is the price of following the wording."))
    if "mm_shap" in p:
        mm = p["mm_shap"]
        out.append(Section("mm_shap", PROBE_TITLES["mm_shap"], definition("mm_shap"), [
            ("T-SHAP (text share)", fmt(mm["t_shap"])), ("V-SHAP (image share)", fmt(mm["v_shap"])),
            ("T-SHAP, per player", fmt(mm["t_shap_per_player"])),
            ("coalitions scored per sample", f"{mm['mean_evaluations']:.0f}"),
            ("largest efficiency gap", f"{mm['max_abs_efficiency_gap']:.1e}")],
            note="T-SHAP depends on how many players each side has; the per-player share corrects for it."))
    if "ablation" in p:
        ab = p["ablation"]
        rows = [(f"accuracy, {k.replace('_', ' ')}", fmt({"mean": ab["accuracy"][k], "ci95": ab["accuracy_ci95"][k]}))
                for k in ab["accuracy"]]
        if "multimodal_gain" in ab:
            rows.append(("multimodal gain (full - no image)",
                         fmt({"mean": ab["multimodal_gain"], "ci95": ab["multimodal_gain_ci95"]})))
            rows.append(("visual information gain (nats)", fmt(ab["visual_info_gain"])))
        if "flip_rate" in ab:
            rows.append(("answers that change with a swapped image", fmt(ab["flip_rate"])))
        out.append(Section("ablation", PROBE_TITLES["ablation"], definition("ablation"), rows, "ablation"))
    if "attention" in p:
        at = p["attention"]
        out.append(Section("attention", PROBE_TITLES["attention"], definition("attention"), [
            ("attention on image tokens", fmt(at["image_attention_share"])),
            ("relative to their share of tokens (1 = proportional)", fmt(at["image_attention_share_normalised"])),
            ("attention on question tokens", fmt(at["question_attention_share"])),
            ("image tokens' share of the sequence", fmt(at["image_token_fraction"]))], "attention_layers",
            note="Attention is correlational, not causal: it says where the model looks, not what it uses."))
    if "degradation" in p:
        dg = p["degradation"]
        rows = [(f"AUC, {m} missing", fmt({"mean": dg[m]["auc"], "ci95": dg[m]["auc_ci95"]})) for m in dg]
        out.append(Section("degradation", PROBE_TITLES["degradation"], definition("degradation"), rows,
                           "degradation", note="A flat image curve means the model never used the image."))
    if "pdm" in p:
        pd = p["pdm"]
        out.append(Section("pdm", PROBE_TITLES["pdm"], definition("pdm"), [
            ("Hellinger distance, first generated token", fmt(pd["first_step_hellinger"])),
            ("Hellinger distance, all generated tokens", fmt(pd["mean_hellinger"])),
            ("log-prob the image adds to each chosen token", fmt(pd["mean_logprob_gain"]))], "pdm_steps"))
    return out


def category_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    cats = summary.get("per_category") or {}
    cols = ["category", "n", "accuracy"]
    if any("language_share" in v for v in cats.values()):
        cols.append("language share")
    if any("t_shap" in v for v in cats.values()):
        cols.append("T-SHAP")
    if any("multimodal_gain" in v for v in cats.values()):
        cols.append("multimodal gain")
    keys = {"language share": "language_share", "T-SHAP": "t_shap", "multimodal gain": "multimodal_gain"}
    rows = []
    for cat, v in cats.items():
        row = [str(cat), str(v["n"]), fmt(v["accuracy"])]
        row += [fmt(v.get(keys[c])) for c in cols[3:]]
        rows.append(row)
    return cols, rows


def adapter_phrase(adapter: dict | None) -> str:
    """``LoRA adapter ft/ (poe, 200 steps)`` for an audited PEFT adapter record, or ''."""
    if not adapter:
        return ""
    kind = {"LORA": "LoRA"}.get(adapter.get("peft_type"), adapter.get("peft_type") or "PEFT")
    trained = ", ".join(x for x in (adapter.get("recipe"), f"{adapter['steps']} steps" if adapter.get("steps") else "")
                        if x)
    return f"{kind} adapter {adapter['path']}" + (f" ({trained})" if trained else "")


def model_label(summary: dict) -> str:
    """The audited model as a reader needs it: the base model and, when one was applied, the adapter."""
    adapter = adapter_phrase(summary.get("adapter"))
    return f"{summary.get('model')} + {adapter}" if adapter else str(summary.get("model"))


def method_rows(summary: dict) -> list[tuple[str, dict]]:
    return [(PROBE_TITLES.get(k, k), v) for k, v in (summary.get("methods") or {}).items()]


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
    rows += [("data", str(summary.get("data"))),
            ("mbias", f"{prov.get('mbias_version')} (commit {prov.get('git_commit') or 'n/a'})"),
            ("model revision", str(prov.get("model_revision"))), ("device", str(prov.get("device"))),
            ("date", str(prov.get("date"))), ("seed", str((summary.get("config") or {}).get("seed")))]
    rows += [(k, str(v)) for k, v in (prov.get("versions") or {}).items() if v]
    return rows
