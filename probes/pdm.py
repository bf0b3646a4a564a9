"""pdm: dependence on the image during generation (M3ID's prompt dependency measure).

The model answers greedily with the full input; along its own answer, each step's next-token distribution with
the image is compared with the distribution without it (the image masked by the baseline, or removed): the
Hellinger distance, and log p(y_t | I, T) - log p(y_t | -, T). Reliance on the image typically falls as
generation goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mbias.config import check_number
from mbias.display import fmt
from mbias.errors import ConfigError
from mbias.probes.base import PROBES, Measure, Plot, Probe, SampleContext, Series
from mbias.stats import bootstrap_mean

if TYPE_CHECKING:
    import torch


@dataclass
class PDMConfig:
    max_new_tokens: int = field(default=8, metadata={"help": "tokens generated and compared per sample"})
    image_absent: str = field(default="baseline", metadata={"help": "baseline (the adapter's image baseline) or "
                                                                    "removed (no image tokens)"})

    def __post_init__(self):
        if self.image_absent not in ("baseline", "removed"):
            raise ConfigError(f"image_absent must be baseline or removed, not {self.image_absent!r}")
        check_number(self, "max_new_tokens", integer=True, ge=1)


def hellinger(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Hellinger distance between distributions given as log-probabilities over the last dim."""
    import torch

    bc = torch.exp(0.5 * (logp + logq)).sum(-1).clamp(max=1.0)
    return torch.sqrt(1.0 - bc)


@PROBES.register("pdm")
class PDMProbe(Probe):
    config_class = PDMConfig
    title = "Image dependence during generation (PDM)"
    measures = (Measure("mean_hellinger", "Hellinger distance with / without the image, generated tokens"),)
    plots = (Plot("pdm_steps", "lines", lambda s, recs: [Series(
        "Hellinger(with image, without)", list(range(1, len(s["hellinger_by_step"]) + 1)), s["hellinger_by_step"],
        side="vision")] if s.get("hellinger_by_step") else [], xlabel="generated token",
        ylabel="Hellinger(with image, without)", ylim=(0, 1)),)
    definition = ("Per generated token, the Hellinger distance between next-token distributions with and without "
                  "the image, and the log-probability the image adds to the chosen token.")

    def run(self, ctx: SampleContext) -> dict:
        import torch

        ad, p = ctx.scorer, ctx.prepared
        ids, feats = ad.variant_inputs(p, None, None)
        text = ad.generate_inputs(p, ids, feats, max_new_tokens=self.config.max_new_tokens)
        cont = torch.tensor(ad.tokenizer(text, add_special_tokens=False).input_ids[: self.config.max_new_tokens],
                            dtype=torch.long)
        if cont.numel() == 0:
            return {"generated": text, "n_steps": 0, "hellinger": [], "logprob_gain": [],
                    "mean_hellinger": None, "mean_logprob_gain": None}
        with_image = ad.continuation_logprobs(p, ids, feats, cont)[0]
        if self.config.image_absent == "removed":
            q = ctx.text_only
            without = ad.continuation_logprobs(q, q.prompt_ids.unsqueeze(0), None, cont)[0]
        else:
            none = torch.zeros(1, ad.patch_groups(p).n, dtype=torch.bool)
            ids0, feats0 = ad.variant_inputs(p, none, None, swap_image=ctx.swap_image)
            without = ad.continuation_logprobs(p, ids0, feats0, cont)[0]
        h = hellinger(with_image, without)
        steps = torch.arange(cont.numel())
        gain = with_image[steps, cont] - without[steps, cont]
        return {"generated": text, "n_steps": int(cont.numel()), "hellinger": h.tolist(),
                "logprob_gain": gain.tolist(), "mean_hellinger": float(h.mean()),
                "mean_logprob_gain": float(gain.mean())}

    def summarize(self, records: list[dict], groups: list[str]) -> dict:
        out = {k: bootstrap_mean([r[k] for r in records], groups) for k in ("mean_hellinger", "mean_logprob_gain")}
        steps = max((r["n_steps"] for r in records), default=0)
        by_step = []
        for t in range(steps):
            vals = [r["hellinger"][t] for r in records if r["n_steps"] > t]
            by_step.append(float(np.mean(vals)))
        out["hellinger_by_step"] = by_step
        out["first_step_hellinger"] = bootstrap_mean(
            [r["hellinger"][0] if r["n_steps"] else None for r in records], groups)
        return out

    @classmethod
    def report_rows(cls, summary: dict) -> list[tuple[str, str]]:
        return [("Hellinger distance, first generated token", fmt(summary["first_step_hellinger"])),
                ("Hellinger distance, all generated tokens", fmt(summary["mean_hellinger"])),
                ("log-prob the image adds to each chosen token", fmt(summary["mean_logprob_gain"]))]

    def describe(self, scorer) -> dict:
        info = super().describe(scorer)
        info.update(value_function="next-token distributions along the greedy answer", estimator="direct",
                    budget=f"greedy generation + 2 teacher-forced passes of up to {self.config.max_new_tokens} "
                           "tokens per sample", image_absent=self.config.image_absent)
        return info

