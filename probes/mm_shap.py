"""mm_shap: token- and patch-level Shapley values (MM-SHAP, Parcalabescu & Frank, ACL 2023; ICLR 2025 decoders).

    T-SHAP = sum_text |phi_j| / (sum_text |phi_j| + sum_image |phi_j|),   V-SHAP = 1 - T-SHAP

Two definitions of the game (``definition``; docs/methods.md, "MM-SHAP: mbias's game and the reference's", has
them side by side with the measured gap):

- ``mbias`` (default): the players are the user's question tokens and the cells of a grid x grid partition of the
  image (grid = ceil(sqrt(#question tokens)) when unset); masks are the scorer's (``image_baseline``,
  ``text_baseline``, ``masking``); the value is the gold answer's log-prob, renormalised over the choices when the
  example has them. Chat-template text is never a player.
- ``reference``: the game of the reference code for decoder VLMs (Heidelberg-NLP/CC-SHAP-VLM,
  ``explain_VLM``): every prompt token is a player, the template's included (special tokens, the image
  placeholders and a whitespace token beside them are never masked, as there); a masked token becomes the "_"
  token; the image players are all p x p cells, p = ceil(sqrt(#prompt tokens with the image as one
  placeholder)), painted black in the pixels; the value is the raw logit, at the first answer position, of the
  token the model itself outputs on the full input (greedy); the budget is shap's Permutation explainer's at
  max_evals=600 (raised by 100 up to 900 until one forward-and-backward pass fits): max_evals // (2n + 1)
  antithetic pairs of permutations, n counting every prompt token.

T-SHAP depends on how many players each side has, so the record also holds the per-player-normalised share
(mean |phi| per text player against mean |phi| per image player). Per-player values are kept for heatmaps.

A sample whose image baseline *is* its image (the default mean-colour baseline of a one-colour picture, a black
baseline of a black one) has only null image players whatever the model does: its T-SHAP would read 1.0 by
construction, so it is recorded as undefined (None, with the reason) and left out of the mean, and counted.
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
DEFINITIONS = ("mbias", "reference")
REFERENCE_MAX_EVALS_STEPS = (0, 100, 200, 300)  # CC-SHAP-VLM retries shap with max_evals 600, 700, 800, 900
TOLERANCE_DEFAULT = 0.02  # chosen by the rule declared in benchmarks/mm_shap_tolerance.py (results/.../curve.md)
DEFINITION_TEXT = {
    "mbias": ("Shapley values of every question token and image patch group (MM-SHAP, mbias's game: question "
              "tokens only, the scorer's masks, log p(gold) over the choices); T-SHAP is the text tokens' share of "
              "the total absolute attribution."),
    "reference": ("Shapley values of every prompt token (template included) and image cell, in the reference "
                  "code's game (Heidelberg-NLP/CC-SHAP-VLM: pixels painted black, tokens replaced by '_', the raw "
                  "logit of the model's own output token, shap's permutation budget); T-SHAP is the text tokens' "
                  "share of the total absolute attribution."),
}


@dataclass
class MMShapConfig:
    definition: str = field(default="mbias", metadata={
        "help": "mbias (question tokens, the scorer's masks, log p(gold) over the choices) or reference (the game "
                "of Heidelberg-NLP/CC-SHAP-VLM: all prompt tokens, black pixels, the model's own output logit, "
                "its permutation budget), for numbers that stand beside the papers'"})
    grid: int | None = field(default=None, metadata={"help": "image players form a grid x grid partition; unset: "
                                                             "ceil(sqrt(#text players)) (mbias: question tokens; "
                                                             "reference: prompt tokens)"})
    estimator: str = field(default="auto", metadata={"help": "auto (exact when few players, else permutation), "
                                                             "exact, permutation, captum_sampling, captum_kernel; "
                                                             "reference: auto is permutation at its budget"})
    max_exact_players: int = field(default=12, metadata={"help": "auto uses exact enumeration up to this many "
                                                                 "(mbias definition)"})
    n_permutations: int = field(default=20, metadata={"help": "permutations for permutation/captum_sampling "
                                                              "(antithetic pairs for permutation); mbias definition. "
                                                              "With a tolerance: the cap"})
    tolerance: float | None = field(default=TOLERANCE_DEFAULT, metadata={
        "help": "permutation estimator (mbias definition): stop drawing antithetic pairs once the standard error "
                "of the sample's T-SHAP (jackknife over pairs) is at or below this, n_permutations being the cap; "
                "unset (null): always n_permutations. Default chosen on benchmarks/results/mm_shap_tolerance/curve.md"})
    min_permutations: int = field(default=6, metadata={"help": "with a tolerance: permutations drawn before the "
                                                               "first check (an error estimate from fewer pairs "
                                                               "is too noisy to stop on)"})
    kernel_samples: int = field(default=200, metadata={"help": "coalitions for captum_kernel"})
    value: str = field(default="auto", metadata={"help": "value function of the gold answer: auto (choice when the "
                                                         "example has choices, else logprob), logprob, prob, or "
                                                         "choice (log-prob renormalised over the choices); mbias "
                                                         "definition"})
    max_evals: int = field(default=600, metadata={"help": "reference definition: shap's max_evals, which sets "
                                                          "max_evals // (2n + 1) antithetic pairs"})
    batch_size: int = field(default=256, metadata={"help": "coalitions handed to the model scorer at once"})

    def __post_init__(self):
        if self.definition not in DEFINITIONS:
            raise ConfigError(f"definition must be mbias or reference, not {self.definition!r}")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"estimator must be one of {', '.join(ESTIMATORS)}, not {self.estimator!r}")
        if self.definition == "reference" and self.estimator.startswith("captum_"):
            raise ConfigError(f"estimator {self.estimator} plays mbias's game only; the reference definition takes "
                              "auto, permutation (its budget) or exact")
        if self.value not in ("auto", "logprob", "prob", "choice"):
            raise ConfigError(f"value must be auto, logprob, prob or choice, not {self.value!r}")
        check_number(self, "grid", integer=True, ge=1, optional=True)
        for name in ("max_exact_players", "n_permutations", "kernel_samples", "batch_size", "max_evals"):
            check_number(self, name, integer=True, ge=1)
        check_number(self, "tolerance", gt=0, le=1, optional=True)
        check_number(self, "min_permutations", integer=True, ge=4)


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


def reference_permutations(n_players: int, max_evals: int = 600) -> int:
    """Permutations CC-SHAP-VLM's shap call evaluates for ``n_players`` features (each prompt token and image
    cell): shap's Permutation explainer runs max_evals // (2n + 1) forward-and-backward passes, and the reference
    retries with max_evals raised by 100, up to +300, while that is 0. Beyond that the reference fails; here one
    pair is the floor."""
    for step in REFERENCE_MAX_EVALS_STEPS:
        pairs = (max_evals + step) // (2 * n_players + 1)
        if pairs:
            return 2 * pairs
    return 2


def check_pixel_grid(grid: int, prepared) -> None:
    """A grid finer than the pixels of the view box has cells with no pixel: refuse it."""
    h, w = prepared.image.size[1], prepared.image.size[0]
    y0, x0, y1, x1 = prepared.view_box
    side = min((y1 - y0) * h, (x1 - x0) * w)
    if grid > side:
        raise ConfigError(f"mm_shap grid {grid} is finer than the image: the part the model sees is "
                          f"{int(side)} pixels on its short side, so some cells would hold no pixel; use a grid "
                          f"<= {int(side)}")


def stderr_summary(records: list[dict]) -> dict:
    """The Monte-Carlo error across the samples: the mean and largest per-sample standard error of T-SHAP, how much
    of the spread of T-SHAP over samples it accounts for (the part of the interval on the mean that is estimator
    noise rather than the samples), the permutations drawn and how many samples stopped at the cap."""
    se = np.array([r["t_shap_stderr"] for r in records if r.get("t_shap_stderr") is not None], dtype=float)
    values = np.array([r["t_shap"] for r in records if r.get("t_shap_stderr") is not None], dtype=float)
    perms = [r["n_permutations"] for r in records if r.get("n_permutations") is not None]
    out = {"t_shap_stderr": None, "max_t_shap_stderr": None, "noise_share_of_variance": None,
           "mean_permutations": float(np.mean(perms)) if perms else None,
           "n_stopped_by_cap": sum(1 for r in records if r.get("stopped_by") == "cap")}
    if len(se):
        out["t_shap_stderr"] = float(np.sqrt(np.mean(se ** 2)))  # root mean square: what adds to the variance
        out["max_t_shap_stderr"] = float(se.max())
        if len(values) > 1 and values.var(ddof=1) > 0:
            out["noise_share_of_variance"] = float(min(1.0, np.mean(se ** 2) / values.var(ddof=1)))
    return out


def stderr_text(summary: dict) -> str:
    text = f"{summary['t_shap_stderr']:.3f} (root mean square; largest {summary['max_t_shap_stderr']:.3f})"
    if summary.get("noise_share_of_variance") is not None:
        text += f", {summary['noise_share_of_variance']:.0%} of T-SHAP's variance over samples"
    if summary.get("tolerance") is not None:
        text += f"; tolerance {summary['tolerance']:g}"
        if summary.get("n_stopped_by_cap"):
            text += f", {summary['n_stopped_by_cap']} sample(s) stopped at the cap"
    if summary.get("mean_permutations") is not None:
        text += f"; {summary['mean_permutations']:.1f} permutations per sample"
    return text


def _image_is_its_baseline(image, baseline) -> bool:
    return np.array_equal(np.asarray(image.convert("RGB")), np.asarray(baseline.convert("RGB")))


class ReferenceGame:
    """CC-SHAP-VLM's game on one prepared example (its ``explain_VLM`` with max_new_tokens=1), played through the
    scorer: players 0..T-1 are the maskable prompt tokens, T..T+p*p-1 the image cells (row-major)."""

    def __init__(self, scorer, prepared, grid: int | None = None):
        import torch

        self.scorer, self.prepared = scorer, prepared
        ids = prepared.prompt_ids
        tok = scorer.tokenizer
        image = set(prepared.image_positions.tolist())
        special = set(getattr(tok, "all_special_ids", []) or []) | {scorer.image_token_id}
        special |= {int(i) for i, t in (getattr(tok, "added_tokens_decoder", {}) or {}).items()
                    if getattr(t, "special", False)}
        fixed = {i for i, t in enumerate(ids.tolist()) if t in special} | image
        # the reference also never masks the lone whitespace token sentencepiece puts beside "<image>"
        for i in list(image):
            for j in (i - 1, i + 1):
                if 0 <= j < len(ids) and j not in fixed and not tok.decode([int(ids[j])]).strip():
                    fixed.add(j)
        self.text_positions = torch.tensor([i for i in range(len(ids)) if i not in fixed], dtype=torch.long)
        self.n_text = int(self.text_positions.numel())
        # the reference's prompt holds one "<image>" token where the processor here has expanded it
        self.n_prompt_tokens = len(ids) - len(image) + (1 if image else 0)
        self.grid = grid or max(1, math.ceil(math.sqrt(self.n_prompt_tokens)))
        self.n_image = self.grid ** 2 if prepared.has_image else 0
        self.n_players = self.n_text + self.n_image
        self.n_reference_features = self.n_prompt_tokens + self.n_image  # fixed tokens are features there too
        underscore = tok("_", add_special_tokens=False).input_ids
        self.mask_token = "_" if len(underscore) == 1 else scorer.config.text_baseline
        self.mask_id = int(underscore[0]) if len(underscore) == 1 else scorer.text_baseline_id()
        self.baseline_image = scorer.baseline_image(prepared, "black") if prepared.has_image else None
        self._image_rows: dict[bytes, torch.Tensor] = {}
        g = self.grid
        self.values = [tok.decode([int(ids[i])]) for i in self.text_positions.tolist()] + [
            f"image[{c // g},{c % g}]" for c in range(self.n_image)]
        full = self._logits(ids.unsqueeze(0), None if not prepared.has_image else prepared.features.unsqueeze(0))
        self.token = int(full[0].argmax())
        self.token_text = tok.decode([self.token])

    def _logits(self, ids, feats):
        """[K, vocab] raw logits at the first answer position (what ``generate`` reports for its first step)."""
        import torch

        sc, answer = self.scorer, [torch.zeros(1, dtype=torch.long)]  # the continuation only sets the length
        rows = [(v, 0) for v in range(ids.shape[0])]
        with torch.no_grad():
            return sc._chunked(rows, lambda chunk: sc._forward_rows(self.prepared, ids, feats, answer, chunk)[0][
                :, 0].float().cpu())

    def _features(self, image_keep):
        """[K, N, D] image feature rows: the example's cells kept, the others painted black in the pixels."""
        import torch

        from mbias.models.geometry import paint_cells

        p, sc = self.prepared, self.scorer
        keys = [bytes(row.numpy().astype(np.uint8)) for row in image_keep]
        todo = {}
        for key, row in zip(keys, image_keep, strict=True):
            if key not in self._image_rows and not bool(row.all()) and key not in todo:
                todo[key] = paint_cells(p.image, self.baseline_image, (~row).nonzero().flatten().tolist(), self.grid,
                                        p.view_box)
        items = list(todo.items())
        bs = sc.batch_rows()
        for i in range(0, len(items), bs):
            chunk = items[i:i + bs]
            for (key, _), f in zip(chunk, sc.image_features_for([img for _, img in chunk]), strict=True):
                self._image_rows[key] = f
        return torch.stack([p.features if bool(row.all()) else self._image_rows[key]
                            for key, row in zip(keys, image_keep, strict=True)])

    def value(self, masks):
        """[K] raw logit of the model's output token for coalitions ``masks`` [K, n] (True = present)."""
        import torch

        masks = masks.reshape(-1, self.n_players).to(torch.bool).cpu()
        ids = self.prepared.prompt_ids.unsqueeze(0).repeat(masks.shape[0], 1)
        q = self.text_positions
        ids[:, q] = torch.where(masks[:, :self.n_text], ids[:, q], torch.full_like(ids[:, q], self.mask_id))
        feats = self._features(masks[:, self.n_text:]) if self.prepared.has_image else None
        return self._logits(ids, feats)[:, self.token]


@PROBES.register("mm_shap")
class MMShapProbe(Probe):
    config_class = MMShapConfig
    title = "MM-SHAP (text tokens vs image patches)"
    note = ("T-SHAP depends on how many players each side has; the per-player share corrects for it. The "
            "definition row says whose game was played (mbias's or the reference code's, docs/methods.md).")
    measures = (Measure("t_shap", "T-SHAP (MM-SHAP)", AWAY, per_category=True, card="t_shap"),)
    plots = (Plot("tshap_distribution", "hist", lambda s, recs: [Series(
        "T-SHAP (MM-SHAP)", [], [r["t_shap"] for r in recs if r["t_shap"] is not None], side="vision")],
        xlabel="text tokens' share of the attribution (0 = all image, 1 = all text)", ylabel="samples", ref=0.5),)
    summary_schema = {"type": "object", "required": ["t_shap", "v_shap"],
                      "properties": {"t_shap": {"$ref": "#/$defs/stat"}, "v_shap": {"$ref": "#/$defs/stat"},
                                     # the Monte-Carlo error (issue 28); absent from summaries written before
                                     "t_shap_stderr": {"type": ["number", "null"]},
                                     "max_t_shap_stderr": {"type": ["number", "null"]},
                                     "tolerance": {"type": ["number", "null"]}}}
    evidence, share_key = ("share", 1), "t_shap"
    definition = DEFINITION_TEXT["mbias"]

    def __init__(self, config=None):
        super().__init__(config)
        self.definition = DEFINITION_TEXT[self.config.definition]

    def grid_for(self, prepared) -> int:
        if self.config.grid:
            return self.config.grid
        return max(1, math.ceil(math.sqrt(max(1, prepared.n_question))))

    def run(self, ctx: SampleContext) -> dict:
        if self.config.definition == "reference":
            return self._run_reference(ctx)
        from mbias.captum_input import ImageTextInput

        cfg = self.config
        value = cfg.value
        if value == "auto":
            value = "choice" if ctx.example.choices else "logprob"
        if value == "choice" and ctx.example.answer not in (ctx.example.choices or []):
            value = "logprob"
        grid = self.grid_for(ctx.prepared)
        if ctx.scorer.config.masking == "pixel":
            check_pixel_grid(grid, ctx.prepared)
        inp = ImageTextInput(ctx.scorer, ctx.prepared, grid, value=value)
        n = inp.n_itp_features
        estimator = cfg.estimator
        if estimator == "auto":
            estimator = "exact" if n <= cfg.max_exact_players else "permutation"
        res = self._estimate(inp.value, n, estimator, ctx, inp, n_text=inp.n_text)
        kind = ctx.scorer.config.image_baseline
        flat = _image_is_its_baseline(ctx.prepared.image, ctx.scorer.baseline_image(ctx.prepared, kind,
                                                                                     ctx.swap_image))
        return self._record(res, inp.n_text, inp.n_image, inp.values, ctx, grid, list(inp.groups.cells),
                            value_function=value, undefined=f"the {kind} baseline equals the image" if flat else None)

    def _estimate(self, value_fn, n, estimator, ctx, inp=None, n_permutations=None, n_text=None):
        from mbias.shapley import exact_shapley, permutation_shapley

        cfg = self.config
        rng = ctx.rng("mm_shap")
        if estimator == "exact":
            res = exact_shapley(value_fn, n, batch_size=cfg.batch_size)
            res.stderr = 0.0
            return res
        if estimator == "permutation":
            # the reference definition keeps its own fixed budget (n_permutations given): no early stop there
            tolerance = cfg.tolerance if n_permutations is None else None
            return permutation_shapley(value_fn, n, n_permutations or cfg.n_permutations, rng=rng,
                                       batch_size=cfg.batch_size, tolerance=tolerance,
                                       min_permutations=cfg.min_permutations,
                                       statistic=lambda phi: t_shap(phi, n_text)[0])
        from mbias.captum_input import captum_shapley

        method = estimator.removeprefix("captum_")
        samples = cfg.n_permutations if method == "sampling" else cfg.kernel_samples
        return captum_shapley(inp, method, n_samples=samples, batch_size=cfg.batch_size,
                              seed=int(rng.integers(2**31)))

    def _run_reference(self, ctx: SampleContext) -> dict:
        cfg = self.config
        game = ReferenceGame(ctx.scorer, ctx.prepared, cfg.grid)
        if ctx.prepared.has_image:
            check_pixel_grid(game.grid, ctx.prepared)
        n_perm = reference_permutations(game.n_reference_features, cfg.max_evals)
        estimator = "exact" if cfg.estimator == "exact" else "permutation"
        res = self._estimate(game.value, game.n_players, estimator, ctx, n_permutations=n_perm,
                             n_text=game.n_text)
        flat = ctx.prepared.has_image and _image_is_its_baseline(ctx.prepared.image, game.baseline_image)
        gold = ctx.prepared.answer_ids
        rec = self._record(res, game.n_text, game.n_image, game.values, ctx, game.grid, list(range(game.n_image)),
                           value_function="output_logit", undefined="the black baseline equals the image" if flat
                           else None)
        rec.update(output_token=game.token_text, output_token_is_answer=bool(game.token == int(gold[0])),
                   text_mask_token=game.mask_token, n_prompt_tokens=game.n_prompt_tokens,
                   reference_permutations=n_perm if estimator == "permutation" else None)
        return rec

    def _record(self, res, n_text, n_image, players, ctx, grid, cells, *, value_function, undefined) -> dict:
        raw, per_player = t_shap(res.phi, n_text)
        if undefined:  # every image player is null by construction: the share says nothing about the model
            raw = per_player = None
        return {
            "t_shap": raw, "v_shap": None if raw is None else 1.0 - raw, "t_shap_per_player": per_player,
            "t_shap_undefined": undefined, "definition": self.config.definition,
            "phi": [float(x) for x in res.phi], "players": players, "n_text": n_text,
            "n_image": n_image, "grid": grid, "cells": cells,
            "view_box": list(ctx.prepared.view_box),
            "v_full": res.v_full, "v_empty": res.v_empty,
            "efficiency_gap": float(res.phi.sum() - (res.v_full - res.v_empty)),
            "estimator": res.estimator, "n_evaluations": res.n_evaluations, "value_function": value_function,
            # the Monte-Carlo standard error of this sample's T-SHAP (0 when exact, None when not estimated: captum
            # estimators, or an undefined T-SHAP), the permutations drawn and why the estimator stopped
            "t_shap_stderr": None if raw is None else res.stderr, "n_permutations": res.n_permutations,
            "stopped_by": res.stopped_by,
        }

    def summarize(self, records: list[dict], groups: list[str]) -> dict:
        out = {k: bootstrap_mean([r[k] for r in records], groups)
               for k in ("t_shap", "v_shap", "t_shap_per_player")}
        out["definition"] = self.config.definition
        out["n_undefined_baseline"] = sum(1 for r in records if r.get("t_shap_undefined"))
        out["mean_evaluations"] = float(np.mean([r["n_evaluations"] for r in records]))
        out["max_abs_efficiency_gap"] = float(max(abs(r["efficiency_gap"]) for r in records))
        out["tolerance"] = self.config.tolerance if self.config.definition == "mbias" else None
        out.update(stderr_summary(records))
        return out

    @classmethod
    def report_rows(cls, summary: dict) -> list[tuple[str, str]]:
        definition = summary.get("definition", "mbias")
        rows = [("definition", "reference (Heidelberg-NLP/CC-SHAP-VLM's game)" if definition == "reference"
                 else "mbias (question tokens; not the papers' game, docs/methods.md)"),
                ("T-SHAP (text share)", fmt(summary["t_shap"])), ("V-SHAP (image share)", fmt(summary["v_shap"])),
                ("T-SHAP, per player", fmt(summary["t_shap_per_player"]))]
        if summary.get("n_undefined_baseline"):
            rows.append(("samples left out (the baseline equals the image)", str(summary["n_undefined_baseline"])))
        if summary.get("t_shap_stderr") is not None:
            rows.append(("Monte-Carlo standard error of T-SHAP, per sample", stderr_text(summary)))
        rows += [("coalitions scored per sample", f"{summary['mean_evaluations']:.0f}"),
                 ("largest efficiency gap", f"{summary['max_abs_efficiency_gap']:.1e}")]
        return rows

    def describe(self, scorer) -> dict:
        info = super().describe(scorer)
        cfg = self.config
        if cfg.definition == "reference":
            info.update(definition_name="reference", source="Heidelberg-NLP/CC-SHAP-VLM (mm_shap_cc_shap.py, "
                        "explain_VLM, max_new_tokens=1)",
                        players="every prompt token (chat template included; special tokens, image placeholders "
                        "and the whitespace token beside them never masked) + all cells of a p x p grid "
                        + (f"(p = {cfg.grid})" if cfg.grid else "(p = ceil(sqrt(#prompt tokens)))"),
                        image_baseline="black", masking="pixel", text_baseline="'_' token",
                        value_function="raw logit of the model's own first output token (greedy) at the first "
                        "answer position", estimator="exact" if cfg.estimator == "exact" else "permutation",
                        budget=f"max_evals {cfg.max_evals} (+100 up to +300 until it fits): "
                        "max_evals // (2n + 1) antithetic pairs")
            return info
        info.update(definition_name="mbias",
                    players="question tokens + image cells of a grid x grid partition (non-empty ones under feature "
                    "masking, all under pixel masking) "
                    + (f"(grid {cfg.grid})" if cfg.grid else "(grid = ceil(sqrt(#question tokens)))"),
                    value_function=f"{cfg.value}: log p(gold answer) renormalised over the choices when the example "
                    "has them (auto/choice), else summed over answer tokens",
                    estimator=cfg.estimator, budget=("all coalitions" if cfg.estimator == "exact" else
                                                     f"{cfg.n_permutations} permutations" if cfg.tolerance is None
                                                     or cfg.estimator.startswith("captum_") else
                                                     f"antithetic pairs until T-SHAP's standard error <= "
                                                     f"{cfg.tolerance:g} (at least {cfg.min_permutations}, at most "
                                                     f"{cfg.n_permutations} permutations)"))
        return info
