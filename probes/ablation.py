"""ablation: the model under counterfactual inputs.

Accuracy and gold-answer log-probability with the full input; the image removed (a prompt with no image tokens);
the image replaced by a blank (mean colour), a noise or another sample's image; the question masked. Derived:
multimodal gain MG = acc(full) - acc(no image) (MMStar's S_v - S_wv), the flip rate (share of predictions that
change when the image is swapped), and the per-sample visual information gain log p(a | I, T) - log p(a | -, T).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mbias.display import fmt
from mbias.errors import ConfigError
from mbias.probes.base import KEEP, MASK, PROBES, REMOVED, UP, Measure, Plot, Probe, SampleContext, Series
from mbias.stats import bootstrap_mean

CONDITIONS = {  # summary name -> (image mode, text mode)
    "full": (KEEP, KEEP),
    "no_image": (REMOVED, KEEP),
    "blank_image": ("blank", KEEP),
    "noise_image": ("noise", KEEP),
    "swapped_image": ("swap", KEEP),
    "no_text": (KEEP, MASK),
}


@dataclass
class AblationConfig:
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS),
                                  metadata={"help": "conditions to run: " + ", ".join(CONDITIONS)})

    def __post_init__(self):
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown or not self.conditions:
            raise ConfigError(f"AblationConfig.conditions must be a non-empty list of {', '.join(CONDITIONS)}; "
                              f"got {self.conditions!r}")


def _accuracy_bars(summary: dict, records: list[dict]) -> list[Series]:
    """Accuracy per condition: the full input, the image conditions, the question masked."""
    acc, ci = summary["accuracy"], summary["accuracy_ci95"]
    out = []
    for label, names, side in (("full input", ["full"], "neutral"),
                               ("image changed", [n for n in acc if "image" in n], "vision"),
                               ("question masked", ["no_text"], "language")):
        names = [n for n in names if n in acc]
        if names:
            out.append(Series(label, [n.replace("_", " ") for n in names], [acc[n] for n in names],
                              [ci[n][0] for n in names], [ci[n][1] for n in names], side))
    return out


@PROBES.register("ablation")
class AblationProbe(Probe):
    config_class = AblationConfig
    title = "Ablations (counterfactual inputs)"
    measures = (Measure("gain", "multimodal gain (accuracy full - no image)", UP, per_category=True,
                        card="multimodal_gain"),
                Measure("acc_no_image", "accuracy, no image"), Measure("acc_no_text", "accuracy, question masked"),
                Measure("acc_swapped_image", "accuracy, swapped image"))
    plots = (Plot("ablation", "bars", _accuracy_bars, ylabel="accuracy", ylim=(0, 1.05)),)
    summary_schema = {
        "type": "object", "required": ["accuracy"],
        "properties": {"accuracy": {"type": "object", "properties": {
            c: {"type": "number"} for c in ("full", "no_image", "blank_image", "noise_image", "swapped_image",
                                            "no_text")}},
            "multimodal_gain": {"type": "number"}}}
    definition = ("Accuracy when the image is removed, blanked, replaced by noise or by another sample's image, "
                  "or when the question is masked; the multimodal gain is full minus no-image accuracy.")

    def run(self, ctx: SampleContext) -> dict:
        names = [c for c in self.config.conditions if c != "swapped_image" or ctx.swap_image is not None]
        outcomes = dict(zip(names, ctx.outcomes([CONDITIONS[c] for c in names]), strict=True))
        record = {}
        for name, o in outcomes.items():
            record[f"acc_{name}"] = float(o.correct)
            record[f"logprob_{name}"] = o.logprob
            record[f"pred_{name}"] = o.prediction
        if "full" in outcomes and "swapped_image" in outcomes:
            record["flip_swap"] = float(outcomes["full"].prediction != outcomes["swapped_image"].prediction)
        if "full" in outcomes and "no_image" in outcomes:
            record["visual_info_gain"] = outcomes["full"].logprob - outcomes["no_image"].logprob
            record["gain"] = record["acc_full"] - record["acc_no_image"]
        return record

    def summarize(self, records: list[dict], groups: list[str]) -> dict:
        acc, acc_ci, logprob = {}, {}, {}
        for name in self.config.conditions:
            key = f"acc_{name}"
            if not any(key in r for r in records):
                continue
            stat = bootstrap_mean([r.get(key) for r in records], groups)
            acc[name], acc_ci[name] = stat["mean"], stat["ci95"]
            logprob[name] = bootstrap_mean([r.get(f"logprob_{name}") for r in records], groups)["mean"]
        out = {**super().summarize(records, groups), "accuracy": acc, "accuracy_ci95": acc_ci,
               "mean_logprob": logprob}
        if any("gain" in r for r in records):
            mg = bootstrap_mean([r.get("gain") for r in records], groups)
            out["multimodal_gain"], out["multimodal_gain_ci95"] = mg["mean"], mg["ci95"]
            out["visual_info_gain"] = bootstrap_mean([r.get("visual_info_gain") for r in records], groups)
        if any("flip_swap" in r for r in records):
            out["flip_rate"] = bootstrap_mean([r.get("flip_swap") for r in records], groups)
        return out

    @classmethod
    def report_rows(cls, summary: dict) -> list[tuple[str, str]]:
        rows = [(f"accuracy, {k.replace('_', ' ')}", fmt({"mean": summary["accuracy"][k],
                                                          "ci95": summary["accuracy_ci95"][k]}))
                for k in summary["accuracy"]]
        if "multimodal_gain" in summary:
            rows.append(("multimodal gain (full - no image)",
                         fmt({"mean": summary["multimodal_gain"], "ci95": summary["multimodal_gain_ci95"]})))
            rows.append(("visual information gain (nats)", fmt(summary["visual_info_gain"])))
        if "flip_rate" in summary:
            rows.append(("answers that change with a swapped image", fmt(summary["flip_rate"])))
        return rows

    def describe(self, scorer) -> dict:
        info = super().describe(scorer)
        info.update(conditions=self.config.conditions, value_function="accuracy and log p(gold answer)",
                    estimator="direct", budget=f"{len(self.config.conditions)} scored variants per sample")
        return info
