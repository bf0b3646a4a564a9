"""modality_shapley: exact two-player Shapley values of {image, text} (the headline number of an audit).

Four scored variants per sample: both players present, image only (question masked), text only (image masked),
neither. With v the value of the gold answer:

    phi_img = 1/2 [(v(I,T) - v(-,T)) + (v(I,-) - v(-,-))]
    phi_txt = 1/2 [(v(I,T) - v(I,-)) + (v(-,T) - v(-,-))]
    vision_share = |phi_img| / (|phi_img| + |phi_txt|),  language_share = 1 - vision_share

A share is undefined (None) when both values are 0; such samples are left out of the share's mean and counted.

Three value functions are recorded for every sample: ``logprob`` (log p(gold), summed over answer tokens, as
captum's LLMAttribution), ``choice`` (log p(gold) renormalised over the example's choices) and ``acc``
(1[prediction correct]). The headline share uses ``value``; ``auto`` takes ``choice`` when the example has
choices. Why: the question also tells the model *what kind* of answer is wanted, so with raw log p(gold) a
masked question costs every model a lot of probability mass (spread over all vocabulary) whatever its bias.
Renormalising over the choices keeps the part of the question's contribution that picks *which* answer, which
is where a language prior acts. On the zoo, raw log-prob shares put a model that answers 95% of counter-prior
questions right at 0.72 "language"; choice-normalised at 0.40 (an earlier zoo build;
benchmarks/results/zoo/probe_shares.md has the pinned zoo).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mbias.display import fmt
from mbias.errors import ConfigError
from mbias.probes.base import AWAY, KEEP, MASK, PROBES, REMOVED, Measure, Plot, Probe, SampleContext, Series
from mbias.shapley import two_player_shapley
from mbias.stats import bootstrap_mean, ratio_share

VALUES = ("auto", "logprob", "choice", "acc")


@dataclass
class ModalityShapleyConfig:
    value: str = field(default="auto", metadata={"help": "headline value function: auto (choice when the example "
                                                         "has choices, else logprob), logprob, choice or acc"})
    image_absent: str = field(
        default="baseline",
        metadata={"help": "how the image player is absent: baseline (the adapter's image baseline, same sequence "
                          "length) or removed (a prompt without image tokens)"},
    )

    def __post_init__(self):
        if self.image_absent not in ("baseline", "removed"):
            raise ConfigError(f"image_absent must be baseline or removed, not {self.image_absent!r}")
        if self.value not in VALUES:
            raise ConfigError(f"value must be one of {', '.join(VALUES)}, not {self.value!r}")


def shares(phi_img: float, phi_txt: float) -> tuple[float | None, float | None]:
    """(vision_share, language_share) from absolute contributions; None when both are zero."""
    total = abs(phi_img) + abs(phi_txt)
    if total == 0:
        return None, None
    vision = abs(phi_img) / total
    return vision, 1.0 - vision


@PROBES.register("modality_shapley")
class ModalityShapleyProbe(Probe):
    config_class = ModalityShapleyConfig
    title = "Modality Shapley (image vs question)"
    measures = (Measure("language_share", "language share (modality Shapley)", AWAY, per_category=True,
                        card="language_share"),)
    plots = (Plot("share_distribution", "hist", lambda s, recs: [Series(
        "language share (modality Shapley)", [], [r["language_share"] for r in recs if r["language_share"] is not None],
        side="language")], xlabel="share of the answer attributed to the question (0 = all image, 1 = all text)",
        ylabel="samples", ref=0.5),)
    summary_schema = {"type": "object", "required": ["language_share", "vision_share"],
                      "properties": {"language_share": {"$ref": "#/$defs/stat"},
                                     "vision_share": {"$ref": "#/$defs/stat"}}}
    evidence, share_key = ("share", 0), "language_share"
    definition = ("Exact two-player Shapley values of the image and the question for the gold answer's "
                  "log-probability (renormalised over the choices when there are choices); the language share is "
                  "the question's part of the total absolute contribution.")

    def run(self, ctx: SampleContext) -> dict:
        absent = REMOVED if self.config.image_absent == "removed" else ctx.scorer.config.image_baseline
        both, img, txt, none = ctx.outcomes([(KEEP, KEEP), (KEEP, MASK), (absent, KEEP), (absent, MASK)])
        value = self.config.value
        if value == "auto":
            value = "choice" if ctx.example.choices else "logprob"
        record = {"value_function": value}
        getters = [("_logprob", lambda o: o.logprob), ("_acc", lambda o: float(o.correct))]
        if ctx.example.choices:
            getters.append(("_choice", lambda o: o.choice_logprob))
        for suffix, get in getters:
            phi_i, phi_t = two_player_shapley(get(both), get(img), get(txt), get(none))
            vis, lang = shares(phi_i, phi_t)
            record.update({
                f"v_full{suffix}": get(both), f"v_image_only{suffix}": get(img),
                f"v_text_only{suffix}": get(txt), f"v_none{suffix}": get(none),
                f"phi_image{suffix}": phi_i, f"phi_text{suffix}": phi_t,
                f"vision_share{suffix}": vis, f"language_share{suffix}": lang,
            })
        for key in ("phi_image", "phi_text", "vision_share", "language_share", "v_full", "v_none"):
            record[key] = record[f"{key}_{value}"]
        return record

    def summarize(self, records: list[dict], groups: list[str]) -> dict:
        out = {}
        for key in ("language_share", "vision_share", "phi_image", "phi_text"):
            out[key] = bootstrap_mean([r[key] for r in records], groups)
            for value in ("logprob", "choice", "acc"):
                if any(f"{key}_{value}" in r for r in records):
                    out[f"{key}_{value}"] = bootstrap_mean([r.get(f"{key}_{value}") for r in records], groups)
        out["value_function"] = sorted({r["value_function"] for r in records})
        # the share of summed absolute contributions: weights samples by how much they move at all
        out["pooled_language_share"] = ratio_share([abs(r["phi_text"]) for r in records],
                                                   [abs(r["phi_text"]) + abs(r["phi_image"]) for r in records])
        return out

    @classmethod
    def report_rows(cls, summary: dict) -> list[tuple[str, str]]:
        rows = [("language share", fmt(summary["language_share"])), ("vision share", fmt(summary["vision_share"])),
                ("phi image (mean)", fmt(summary["phi_image"])), ("phi text (mean)", fmt(summary["phi_text"]))]
        for value, label in (("logprob", "raw log-prob"), ("acc", "accuracy")):
            if f"language_share_{value}" in summary:
                rows.append((f"language share, {label}-valued", fmt(summary[f"language_share_{value}"])))
        rows.append(("value function", ", ".join(summary["value_function"])))
        return rows

    def describe(self, scorer) -> dict:
        info = super().describe(scorer)
        info.update(players=["image", "question"], value_function=f"{self.config.value}: log p(gold answer) "
                    "renormalised over the choices when the example has them (auto/choice), else summed over "
                    "answer tokens (logprob); 1[prediction correct] (acc) also recorded",
                    estimator="exact (4 coalitions)",
                    budget="4 scored variants per sample")
        return info
