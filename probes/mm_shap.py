"""mm_shap: token- and patch-level Shapley values (MM-SHAP, Parcalabescu & Frank, ACL 2023; ICLR 2025 decoders).

Players: every question token and the non-empty cells of a grid x grid partition of the image. MM-SHAP's rule,
used when ``grid`` is unset, takes grid = ceil(sqrt(#question tokens)) so both sides have similar player counts.

    T-SHAP = sum_text |phi_j| / (sum_text |phi_j| + sum_image |phi_j|),   V-SHAP = 1 - T-SHAP

T-SHAP depends on how many players each side has, so the record also holds the per-player-normalised share
(mean |phi| per text player against mean |phi| per image player). Per-player values are kept for heatmaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mbias.config import check_number
from mbias.display import fmt
from mbias.errors import ConfigError
from mbias.probes.base import AWAY, PROBES, Measure, Plot, Probe, SampleContext, Series
from mbias.stats import bootstrap_mean

ESTIMATORS = ("auto", "exact", "permutation", "captum_sampling", "captum_kernel")


@dataclass
class MMShapConfig:
    grid: int | None = field(default=None, metadata={"help": "image players form a grid x grid partition; unset: "
                                                             "ceil(sqrt(#question tokens)) as in MM-SHAP"})
    estimator: str = field(default="auto", metadata={"help": "auto (exact when few players, else permutation), "
                                                             "exact, permutation, captum_sampling, captum_kernel"})
    max_exact_players: int = field(default=12, metadata={"help": "auto uses exact enumeration up to this many"})
    n_permutations: int = field(default=20, metadata={"help": "permutations for permutation/captum_sampling "
                                                              "(antithetic pairs for permutation)"})
    kernel_samples: int = field(default=200, metadata={"help": "coalitions for captum_kernel"})
    value: str = field(default="auto", metadata={"help": "value function of the gold answer: auto (choice when the "
                                                         "example has choices, else logprob), logprob, prob, or "
                                                         "choice (log-prob renormalised over the choices)"})
    batch_size: int = field(default=256, metadata={"help": "coalitions handed to the model scorer at once"})

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"estimator must be one of {', '.join(ESTIMATORS)}, not {self.estimator!r}")
        if self.value not in ("auto", "logprob", "prob", "choice"):
            raise ConfigError(f"value must be auto, logprob, prob or choice, not {self.value!r}")
        check_number(self, "grid", integer=True, ge=1, optional=True)
        for name in ("max_exact_players", "n_permutations", "kernel_samples", "batch_size"):
            check_number(self, name, integer=True, ge=1)


def t_shap(phi: np.ndarray, n_text: int) -> tuple[float | None, float | None]:
    """(raw T-SHAP, per-player-normalised T-SHAP); None when every value is 0."""
    a = np.abs(phi)
    text, image = a[:n_text], a[n_text:]
    total = text.sum() + image.sum()
    raw = float(text.sum() / total) if total > 0 else None
    mt = text.mean() if len(text) else 0.0
    mi = image.mean() if len(image) else 0.0
    per_player = float(mt / (mt + mi)) if (mt + mi) > 0 else None
    return raw, per_player


@PROBES.register("mm_shap")
class MMShapProbe(Probe):
    config_class = MMShapConfig
    title = "MM-SHAP (question tokens vs image patches)"
    note = "T-SHAP depends on how many players each side has; the per-player share corrects for it."
    measures = (Measure("t_shap", "T-SHAP (MM-SHAP)", AWAY, per_category=True, card="t_shap"),)
    plots = (Plot("tshap_distribution", "hist", lambda s, recs: [Series(
        "T-SHAP (MM-SHAP)", [], [r["t_shap"] for r in recs if r["t_shap"] is not None], side="vision")],
        xlabel="question tokens' share of the attribution (0 = all image, 1 = all text)", ylabel="samples", ref=0.5),)
    summary_schema = {"type": "object", "required": ["t_shap", "v_shap"],
                      "properties": {"t_shap": {"$ref": "#/$defs/stat"}, "v_shap": {"$ref": "#/$defs/stat"}}}
    evidence, share_key = ("share", 1), "t_shap"
    definition = ("Shapley values of every question token and image patch group (MM-SHAP); T-SHAP is the text "
                  "tokens' share of the total absolute attribution.")

    def grid_for(self, prepared) -> int:
        if self.config.grid:
            return self.config.grid
        return max(1, math.ceil(math.sqrt(max(1, prepared.n_question))))

    def run(self, ctx: SampleContext) -> dict:
        from mbias.captum_input import ImageTextInput, captum_shapley
        from mbias.shapley import exact_shapley, permutation_shapley

        cfg = self.config
        value = cfg.value
        if value == "auto":
            value = "choice" if ctx.example.choices else "logprob"
        if value == "choice" and ctx.example.answer not in (ctx.example.choices or []):
            value = "logprob"
        inp = ImageTextInput(ctx.scorer, ctx.prepared, self.grid_for(ctx.prepared), value=value)
        n = inp.n_itp_features
        estimator = cfg.estimator
        if estimator == "auto":
            estimator = "exact" if n <= cfg.max_exact_players else "permutation"
        rng = ctx.rng("mm_shap")
        if estimator == "exact":
            res = exact_shapley(inp.value, n, batch_size=cfg.batch_size)
        elif estimator == "permutation":
            res = permutation_shapley(inp.value, n, cfg.n_permutations, rng=rng, batch_size=cfg.batch_size)
        else:
            method = estimator.removeprefix("captum_")
            samples = cfg.n_permutations if method == "sampling" else cfg.kernel_samples
            res = captum_shapley(inp, method, n_samples=samples, batch_size=cfg.batch_size,
                                 seed=int(rng.integers(2**31)))
        raw, per_player = t_shap(res.phi, inp.n_text)
        return {
            "t_shap": raw, "v_shap": None if raw is None else 1.0 - raw, "t_shap_per_player": per_player,
            "phi": [float(x) for x in res.phi], "players": inp.values, "n_text": inp.n_text,
            "n_image": inp.n_image, "grid": inp.groups.grid, "cells": list(inp.groups.cells),
            "view_box": list(ctx.prepared.view_box),
            "v_full": res.v_full, "v_empty": res.v_empty,
            "efficiency_gap": float(res.phi.sum() - (res.v_full - res.v_empty)),
            "estimator": res.estimator, "n_evaluations": res.n_evaluations, "value_function": value,
        }

    def summarize(self, records: list[dict], groups: list[str]) -> dict:
        out = {k: bootstrap_mean([r[k] for r in records], groups)
               for k in ("t_shap", "v_shap", "t_shap_per_player")}
        out["mean_evaluations"] = float(np.mean([r["n_evaluations"] for r in records]))
        out["max_abs_efficiency_gap"] = float(max(abs(r["efficiency_gap"]) for r in records))
        return out

    @classmethod
    def report_rows(cls, summary: dict) -> list[tuple[str, str]]:
        return [("T-SHAP (text share)", fmt(summary["t_shap"])), ("V-SHAP (image share)", fmt(summary["v_shap"])),
                ("T-SHAP, per player", fmt(summary["t_shap_per_player"])),
                ("coalitions scored per sample", f"{summary['mean_evaluations']:.0f}"),
                ("largest efficiency gap", f"{summary['max_abs_efficiency_gap']:.1e}")]

    def describe(self, scorer) -> dict:
        info = super().describe(scorer)
        cfg = self.config
        info.update(players="question tokens + non-empty image cells of a grid x grid partition "
                    + (f"(grid {cfg.grid})" if cfg.grid else "(grid = ceil(sqrt(#question tokens)))"),
                    value_function=f"{cfg.value}: log p(gold answer) renormalised over the choices when the example "
                    "has them (auto/choice), else summed over answer tokens",
                    estimator=cfg.estimator, budget=(f"{cfg.n_permutations} permutations" if cfg.estimator != "exact"
                                                     else "all coalitions"))
        return info
