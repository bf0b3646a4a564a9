"""The verdict: which side the model leans on, how much, and on what evidence (docs/methods.md, "Verdict").

Two kinds of evidence, each with its 95% interval:
- behaviour (the ``conflict`` probe): on the samples where the question alone (image removed) gives a wrong
  answer, how often the model gives that answer with the image in view (``follows_text``); and where the image
  alone (question masked) gives a wrong answer, how often the model gives it anyway (``follows_image``);
- shares (``modality_shapley``, else ``mm_shap``'s T-SHAP): the question's part of the attribution.

A share has no fixed meaning in the middle of its scale (on the zoo an unbiased model reads 0.39-0.47 and one
that fails half its counter-prior questions 0.50-0.67), so shares decide only at the extremes, where a model
barely uses one side at all, or when there is no behavioural evidence.
"""

from __future__ import annotations

FOLLOW_FLOOR = 0.10  # a follows rate counts when its 95% interval lies above this
SEVERITY = ((0.80, "severe"), (0.30, "moderate"), (FOLLOW_FLOOR, "slight"))  # bands, highest first
# a follows rate's severity: the band its whole 95% interval lies in, else the span of bands it covers, written
# "low-high" (summary.json's verdict.severity takes one of these)
SEVERITIES = ("slight", "moderate", "severe", "slight-moderate", "moderate-severe", "slight-severe")
SHARE_EXTREME = 0.80  # a share interval beyond this (or below 1 - this) decides on its own: one side barely used
MIN_CONFLICTS = 10

RULE = (f"a side whose share of the attribution has a 95% interval above {SHARE_EXTREME:.2f} dominates "
        f"(severe: the model barely uses the other side); otherwise language-reliant when, on the samples where the "
        f"question alone gives a wrong answer, the model repeats that answer (95% interval above "
        f"{FOLLOW_FLOOR:.2f}); vision-reliant when, where the image alone gives a wrong answer, it repeats that one "
        f"(interval above {FOLLOW_FLOOR:.2f}) and the language share's interval lies below 0.5; if both, the higher "
        f"rate; else balanced. Severity from the winning rate's 95% interval: slight below {SEVERITY[1][0]:.2f}, "
        f"moderate below {SEVERITY[0][0]:.2f}, severe from {SEVERITY[0][0]:.2f}, a band named only when the whole "
        f"interval lies inside it, else the span (an interval of [0.14, 0.35] is slight-moderate). With fewer "
        f"than {MIN_CONFLICTS} conflicts of "
        "either kind the share alone decides: a side dominates when its interval lies beyond 0.5 +/- the margin")


def band(rate: float) -> str:
    """slight / moderate / severe: the band a follows rate lies in (below the floor counts as slight)."""
    return next((name for cut, name in SEVERITY if rate >= cut), "slight")


def severity(ci95: list[float]) -> str:
    """The severity of a follows rate that cleared the floor, read from its 95% interval: the band when the whole
    interval lies inside one (``moderate``), else the span of bands it covers (``slight-moderate``), so that one
    sample more or less does not flip the label when the rate sits at a cut point."""
    low, high = band(ci95[0]), band(ci95[1])
    return low if low == high else f"{low}-{high}"


def _evidence(probes_summary: dict, kind: str) -> str | None:
    """The probe in the summary that declares this kind of verdict evidence (the best-ranked), or None."""
    from mbias.probes import PROBES

    found = [(PROBES.get(n).evidence[1], n) for n in probes_summary
             if n in PROBES and (PROBES.get(n).evidence or ("",))[0] == kind]
    return min(found)[1] if found else None


def _share(probes_summary: dict) -> tuple[dict | None, str | None]:
    from mbias.probes import PROBES

    name = _evidence(probes_summary, "share")
    return (probes_summary[name][PROBES.get(name).share_key], name) if name else (None, None)


def _behaviour(conflict: dict, share: dict | None) -> tuple[str | None, dict | None]:
    """The side the conflict rates point to and its rate (the stat), or (None, None) without enough conflicts.

    Following the wording is the behavioural definition of a language prior, so ``follows_text`` counts on its own.
    ``follows_image`` is weaker evidence: when an example has choices, masking the question does not hide what
    kind of answer is wanted (the choices say it), so a model that *misperceives* the same way with and without
    the question repeats its image-alone answer too. It counts only when the attribution agrees that the image
    carries more of the answer than the question (the share's interval below 0.5).
    """
    def rate(key, n_key):
        stat = conflict[key]
        ok = conflict[n_key] >= MIN_CONFLICTS and stat["mean"] is not None
        return stat if ok else None

    text, image = rate("follows_text", "n_text_conflicts"), rate("follows_image", "n_image_conflicts")
    if text is None and image is None:
        return None, None
    language = text is not None and text["ci95"][0] > FOLLOW_FLOOR
    vision = (image is not None and image["ci95"][0] > FOLLOW_FLOOR and share is not None
              and share["mean"] is not None and share["ci95"][1] < 0.5)
    if language and vision:
        language = text["mean"] >= image["mean"]
        vision = not language
    if language:
        return "language", text
    if vision:
        return "vision", image
    return "balanced", None


def verdict(probes_summary: dict, margin: float) -> dict:
    """The verdict record of summary.json (see reports/summary.schema.json)."""
    share, share_probe = _share(probes_summary)
    conflict_probe = _evidence(probes_summary, "conflict")
    conflict = probes_summary[conflict_probe] if conflict_probe else None
    out = {"dominant_modality": None, "severity": None, "leaning": None,
           "language_share": share["mean"] if share else None, "ci95": share["ci95"] if share else [None, None],
           "follows_text": conflict["follows_text"] if conflict else None,
           "follows_image": conflict["follows_image"] if conflict else None,
           "n_text_conflicts": conflict["n_text_conflicts"] if conflict else None,
           "n_image_conflicts": conflict["n_image_conflicts"] if conflict else None,
           "rests_on": None, "evidence": [], "margin": margin, "rule": RULE, "n": share["n"] if share else None}
    side, rate = _behaviour(conflict, share) if conflict else (None, None)
    extreme = None
    if share and share["mean"] is not None:
        lo, hi = share["ci95"]
        extreme = "language" if lo > SHARE_EXTREME else "vision" if hi < 1 - SHARE_EXTREME else None
    if extreme:  # the model barely uses the other side at all (an exact attribution): that decides
        out.update(dominant_modality=extreme, severity="severe", rests_on=share_probe, evidence=[share_probe])
        if side is not None:
            out["evidence"].append(conflict_probe)
        if side not in (None, "balanced", extreme):
            out["note"] = f"the conflicts point the other way ({side})"
        return out
    if side is not None:
        out.update(dominant_modality=side, severity="none" if side == "balanced" else severity(rate["ci95"]),
                   rests_on=conflict_probe, evidence=[conflict_probe])
        return out
    if share is None or share["mean"] is None:
        out["note"] = "no share probe (modality_shapley or mm_shap) and too few conflicts (conflict probe) to judge"
        return out
    # no behavioural evidence: the share decides, against 0.5 +/- margin
    lo, hi = share["ci95"]
    side = "language" if lo > 0.5 + margin else "vision" if hi < 0.5 - margin else "balanced"
    out.update(dominant_modality=side, rests_on=share_probe, evidence=[share_probe])
    out["severity"] = "none" if side == "balanced" else None  # a mid-scale share cannot rate severity
    if side == "balanced":  # say which way it leans when the whole interval is on one side of 0.5
        out["leaning"] = "language" if lo > 0.5 else "vision" if hi < 0.5 else None
    return out
