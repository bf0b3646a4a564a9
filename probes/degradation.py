"""degradation: missing-modality curves (the LNLN protocol, "Towards Robust Multimodal Sentiment Analysis with
Incomplete Data", NeurIPS 2024).

Each image patch group (or each question token) is dropped independently with rate r in {0.0, 0.1, ..., 0.9};
accuracy and mean gold log-probability at each r, averaged over several random draws, and the area under the
accuracy curve. A flat image curve means the model never used the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mbias.config import check_number
from mbias.display import fmt
from mbias.errors import ConfigError
from mbias.probes.base import PROBES, Measure, Plot, Probe, SampleContext, Series
from mbias.stats import auc, bootstrap_mean


@dataclass
class DegradationConfig:
    rates: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(10)],
                               metadata={"help": "missing rates, each in [0, 1)"})
    draws: int = field(default=4, metadata={"help": "random masks per rate and sample"})
    modalities: list[str] = field(default_factory=lambda: ["image", "text"],
                                  metadata={"help": "which curves: image, text"})

    def __post_init__(self):
        if not self.rates or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1
                                 for r in self.rates):
            raise ConfigError(f"DegradationConfig.rates must be a non-empty list of numbers in [0, 1); got "
                              f"{self.rates!r}")
        check_number(self, "draws", integer=True, ge=1)
        if set(self.modalities) - {"image", "text"}:
            raise ConfigError(f"modalities must be image and/or text; got {self.modalities}")


def _curves(summary: dict, records: list[dict]) -> list[Series]:
    return [Series(f"{m} missing (AUC {summary[m]['auc']:.2f})", summary[m]["rates"], summary[m]["accuracy"],
                   [ci[0] for ci in summary[m]["accuracy_ci95"]], [ci[1] for ci in summary[m]["accuracy_ci95"]],
                   "vision" if m == "image" else "language")
            for m in ("image", "text") if m in summary]


@PROBES.register("degradation")
class DegradationProbe(Probe):
    config_class = DegradationConfig
    title = "Missing-modality curves"
    note = "A flat image curve means the model never used the image."
    measures = (Measure("image_auc", "degradation AUC, image"), Measure("text_auc", "degradation AUC, text"))
    plots = (Plot("degradation", "lines", _curves, xlabel="missing rate", ylabel="accuracy", ylim=(0, 1.05)),)
    summary_schema = {"type": "object", "properties": {"image": {"$ref": "#/$defs/curve"},
                                                       "text": {"$ref": "#/$defs/curve"}}}
    definition = ("Accuracy as a growing share of image patches (or question tokens) goes missing at random; the "
                  "area under the curve summarises robustness, and a flat image curve means the image was unused.")

    def run(self, ctx: SampleContext) -> dict:
        import torch

        p, ad, cfg = ctx.prepared, ctx.scorer, self.config
        record = {"rates": list(cfg.rates)}
        for modality in cfg.modalities:
            n = ad.patch_groups(p).n if modality == "image" else p.n_question
            rng = ctx.rng(f"degradation/{modality}")
            keep = torch.from_numpy(
                rng.random((len(cfg.rates), cfg.draws, n)) >= np.asarray(cfg.rates)[:, None, None])
            flat = keep.reshape(-1, n)
            image_keep, text_keep = (flat, None) if modality == "image" else (None, flat)
            ids, feats = ad.variant_inputs(p, image_keep, text_keep)
            outcomes = ctx.evaluate(p, ids, feats)
            acc = np.array([o.correct for o in outcomes], dtype=float).reshape(len(cfg.rates), cfg.draws)
            lp = np.array([o.logprob for o in outcomes]).reshape(len(cfg.rates), cfg.draws)
            record[f"{modality}_accuracy"] = acc.mean(1).tolist()
            record[f"{modality}_logprob"] = lp.mean(1).tolist()
            record[f"{modality}_auc"] = auc(cfg.rates, acc.mean(1))
        return record

    def summarize(self, records: list[dict], groups: list[str]) -> dict:
        out = super().summarize(records, groups)  # image_auc / text_auc; the curves below
        for modality in self.config.modalities:
            accs = np.array([r[f"{modality}_accuracy"] for r in records])
            lps = np.array([r[f"{modality}_logprob"] for r in records])
            curve = accs.mean(0)
            auc_stat = bootstrap_mean([r[f"{modality}_auc"] for r in records], groups)
            out[modality] = {
                "rates": list(self.config.rates), "accuracy": curve.tolist(), "logprob": lps.mean(0).tolist(),
                "auc": auc(self.config.rates, curve), "auc_ci95": auc_stat["ci95"],
                "accuracy_ci95": [bootstrap_mean(accs[:, i], groups)["ci95"] for i in range(accs.shape[1])],
            }
        return out

    @classmethod
    def report_rows(cls, summary: dict) -> list[tuple[str, str]]:
        return [(f"AUC, {m} missing", fmt({"mean": summary[m]["auc"], "ci95": summary[m]["auc_ci95"]}))
                for m in ("image", "text") if m in summary]

    def describe(self, scorer) -> dict:
        info = super().describe(scorer)
        info.update(value_function="accuracy and log p(gold answer)", estimator="Monte-Carlo masks",
                    budget=f"{len(self.config.rates)} rates x {self.config.draws} draws x "
                           f"{len(self.config.modalities)} modalities per sample")
        return info
