"""modality_shapley: exact two-player Shapley values of {image, text} (the headline number of an audit).

Four scored variants per sample: both players present, image only (question masked), text only (image masked),
neither. With v = log p(gold answer) (or 1[correct] for the accuracy-valued version):

    phi_img = 1/2 [(v(I,T) - v(-,T)) + (v(I,-) - v(-,-))]
    phi_txt = 1/2 [(v(I,T) - v(I,-)) + (v(-,T) - v(-,-))]
    vision_share = |phi_img| / (|phi_img| + |phi_txt|),  language_share = 1 - vision_share

A share is undefined (None) when both values are 0; such samples are left out of the share's mean and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mbias.probes.base import KEEP, MASK, PROBES, REMOVED, Probe, SampleContext

from mbias.errors import ConfigError
from mbias.stats import bootstrap_mean, ratio_share


@dataclass
class ModalityShapleyConfig:
    image_absent: str = field(
        default="baseline",
        metadata={"help": "how the image player is absent: baseline (the adapter's image baseline, same sequence "
                          "length) or removed (a prompt without image tokens)"},
    )

    def __post_init__(self):
        if self.image_absent not in ("baseline", "removed"):
            raise ConfigError(f"image_absent must be baseline or removed, not {self.image_absent!r}")


def two_player_shapley(v_both: float, v_img: float, v_txt: float, v_none: float) -> tuple[float, float]:
    """(phi_img, phi_txt) from the values of {I,T}, {I}, {T}, {}."""
    phi_img = 0.5 * ((v_both - v_txt) + (v_img - v_none))
    phi_txt = 0.5 * ((v_both - v_img) + (v_txt - v_none))
    return phi_img, phi_txt


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
    definition = ("Exact two-player Shapley values of the image and the question for the gold answer's "
                  "log-probability; the language share is the text's part of the total absolute contribution.")

    def run(self, ctx: SampleContext) -> dict:
        absent = REMOVED if self.config.image_absent == "removed" else ctx.adapter.config.image_baseline
        both, img, txt, none = ctx.outcomes([(KEEP, KEEP), (KEEP, MASK), (absent, KEEP), (absent, MASK)])
        record = {}
        for suffix, get in (("", lambda o: o.logprob), ("_acc", lambda o: float(o.correct))):
            phi_i, phi_t = two_player_shapley(get(both), get(img), get(txt), get(none))
            vis, lang = shares(phi_i, phi_t)
            record.update({
                f"v_full{suffix}": get(both), f"v_image_only{suffix}": get(img),
                f"v_text_only{suffix}": get(txt), f"v_none{suffix}": get(none),
                f"phi_image{suffix}": phi_i, f"phi_text{suffix}": phi_t,
                f"vision_share{suffix}": vis, f"language_share{suffix}": lang,
            })
        return record

    def summarize(self, records: list[dict], groups: list[str]) -> dict:
        out = {}
        for key in ("language_share", "vision_share", "phi_image", "phi_text", "language_share_acc",
                    "vision_share_acc", "phi_image_acc", "phi_text_acc"):
            out[key] = bootstrap_mean([r[key] for r in records], groups)
        # the share of summed absolute contributions: weights samples by how much they move at all
        out["pooled_language_share"] = ratio_share([abs(r["phi_text"]) for r in records],
                                                   [abs(r["phi_text"]) + abs(r["phi_image"]) for r in records])
        return out

    def describe(self, adapter) -> dict:
        info = super().describe(adapter)
        info.update(players=["image", "question"], value_function="log p(gold answer), summed over answer tokens; "
                    "accuracy-valued version with 1[prediction correct]", estimator="exact (4 coalitions)",
                    budget="4 scored variants per sample")
        return info
