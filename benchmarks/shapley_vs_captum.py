"""Token- and patch-level Shapley values: captum's generic path as a user would write it, against mbias mm_shap.

Same model (zoo:shapes-p90), same examples, same players (question tokens + a grid x grid of image cells), same
game: log p(gold answer), masked question tokens become the pad token, masked image cells are painted with the
image's mean colour. Ground truth: exact Shapley values by enumerating every coalition.

(a) captum: ``LLMAttribution(ShapleyValueSampling(model), tokenizer)`` with a joint input written the way captum's
    docs suggest (a subclass of ``ImageMaskInput`` whose ``to_model_input`` masks the text and re-runs the
    processor); captum scores one coalition per forward pass and re-encodes the image each time. It is called
    with ``use_cached_outputs=False``: captum's default cached path loses the image under transformers 5 (see
    ``captum_user_path``), and the script checks that both sides score the same coalitions alike before timing.
(b) mbias ``mm_shap`` on the same pixel-level game (batched coalitions, antithetic permutations), and on its
    default feature-level game (vision tower once per example; error against that game's own exact values).

For several budgets: seconds per example and mean relative L1 error ||phi - phi*||_1 / ||phi*||_1. The last line is
the speed-up at equal error.

    python benchmarks/shapley_vs_captum.py [--examples 6] [--grid 2]
    python benchmarks/shapley_vs_captum.py --shape llava-1.5 [--examples 2]

Writes benchmarks/results/shapley_vs_captum.{json,md}.

``--shape llava-1.5``: the same comparison at the LLaVA-1.5 shape (``benchmarks/real_shapes.py``: CLIP at 336 px,
patch 14, 576 image tokens; a tiny-width language model with random weights; POPE-style questions, the ones
nearest 34 question tokens). Players = question tokens + the grid mm_shap picks (ceil(sqrt(#question tokens))
squared cells, ``--grid`` overrides), far too many for exact enumeration, so the error is against a high-budget
reference: mbias's permutation estimator with ``--reference-permutations`` antithetic permutations per game,
drawn with other seeds than every estimate it judges, as two independent halves whose disagreement gives the
reference's own noise (reported beside the errors). Also (c) MM-SHAP's own sampling scheme, as its released code
(Heidelberg-NLP/CC-SHAP-VLM) runs it: ``shap.explainers.Permutation`` at max_evals 600 (+100 up to +300 until it
fits), i.e. max_evals // (2n + 1) antithetic pairs for n players (``probes/mm_shap.py``,
``reference_permutations``), on the same pixel-level game, with larger max_evals for a curve. Writes
benchmarks/results/shapley_vs_captum_llava15.{json,md}.

``--shape llava-1.5 --weights trained``: random weights make a near-additive game, where one antithetic pair is
already near exact and every comparison sits at the reference's noise floor. This runs the same comparison on
``real_shapes.trained_llava()`` (a tiny LLaVA trained at 336 px / patch 14, 576 image tokens, on shapes-p50; built
into the zoo cache on first use, about 16 minutes on 2 cores), on the first 6 examples of its test split with at
most ``--max-players`` (13) players at 2x2 image cells, against exact values (every coalition enumerated). Writes
benchmarks/results/shapley_vs_captum_llava15_trained.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mbias.provenance import results_header

OUT = Path(__file__).parent / "results"


def make_user_input(scorer, prepared, grid: int):
    """What a captum user writes for text tokens + image cells together: captum has no joint input, and
    LLMAttribution accepts only its own input classes, so one subclasses ImageMaskInput."""
    from captum.attr._utils.interpretable_input import ImageMaskInput

    from mbias.models import geometry

    groups = scorer.patch_groups(prepared, grid)
    question = prepared.question_positions.tolist()
    base_ids = prepared.prompt_ids.clone()
    pad = scorer.text_baseline_id()
    image = prepared.image
    blank = scorer.baseline_image(prepared, "blank")
    prompt = scorer.build_prompt(prepared.example.question, True)

    class ImageAndTextInput(ImageMaskInput):
        def __init__(self):
            super().__init__(image, processor_fn=lambda img: scorer.process(prompt, img))
            self.n_itp_features = len(question) + groups.n
            self.values = list(prepared.question_tokens) + [f"cell{c}" for c in groups.cells]

        def to_tensor(self):
            return torch.ones(1, self.n_itp_features)

        def to_model_input(self, perturbed_tensor=None):
            if perturbed_tensor is None:
                return dict(self.original_model_inputs)
            keep = perturbed_tensor[0] > 0.5
            masked_cells = [groups.cells[g] for g in range(groups.n) if not keep[len(question) + g]]
            painted = geometry.paint_cells(image, blank, masked_cells, grid, prepared.view_box)
            inputs = dict(scorer.process(prompt, painted))
            ids = base_ids.clone()
            for k, pos in enumerate(question):
                if not keep[k]:
                    ids[pos] = pad
            inputs["input_ids"] = ids.unsqueeze(0)
            return inputs

    return ImageAndTextInput()


def captum_setup(scorer, prepared, grid: int):
    """The joint input and the attribution object, as a captum user builds them."""
    from captum.attr import LLMAttribution, ShapleyValueSampling

    return make_user_input(scorer, prepared, grid), LLMAttribution(ShapleyValueSampling(scorer.model),
                                                                    scorer.tokenizer)


def captum_user_path(scorer, prepared, grid: int, n_samples: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    inp, llm_attr = captum_setup(scorer, prepared, grid)
    with torch.no_grad():
        # use_cached_outputs=False: with captum 0.9's default (True) and transformers 5, captum's cached decoding
        # path calls prepare_inputs_for_generation, which drops pixel_values, so every coalition scores the model
        # without its image and the image players get exactly 0 (check_same_game catches this)
        res = llm_attr.attribute(inp, target=prepared.answer_ids, n_samples=n_samples, use_cached_outputs=False)
    return res.seq_attr.detach().cpu().numpy().astype(np.float64)


def check_same_game(scorer, prepared, grid: int, value_fn, n: int, n_checks: int = 4) -> None:
    """captum's forward and mbias's value function must score the same coalitions alike, or errors against the
    exact values compare different games."""
    inp, llm_attr = captum_setup(scorer, prepared, grid)
    rng = np.random.default_rng(0)
    masks = [np.zeros(n, bool), np.ones(n, bool)] + [rng.random(n) < 0.5 for _ in range(n_checks - 2)]
    for m in masks:
        t = torch.from_numpy(m).float()[None]
        with torch.no_grad():
            theirs = float(llm_attr._forward_func(t, inp, prepared.answer_ids, False).flatten()[0])
        ours = float(value_fn(torch.from_numpy(m)[None])[0])
        if abs(theirs - ours) > 1e-3:
            raise SystemExit(f"captum and mbias score coalition {m.astype(int).tolist()} differently "
                             f"({theirs:.5f} vs {ours:.5f}): the comparison would not be of the same game")


def rel_error(phi: np.ndarray, exact: np.ndarray) -> float:
    return float(np.abs(phi - exact).sum() / max(np.abs(exact).sum(), 1e-12))



def _summarise(rows: dict) -> dict:
    """Per method, per budget: the mean seconds, relative error, coalitions and model calls over the examples
    (``rows[label][budget]`` holds one such 4-tuple per example)."""
    return {label: [{"budget": b, "seconds": float(np.mean([r[0] for r in v])),
                     "rel_error": float(np.mean([r[1] for r in v])),
                     "coalitions": float(np.mean([r[2] for r in v])),
                     "forward_passes": float(np.mean([r[3] for r in v]))} for b, v in by_budget.items()]
            for label, by_budget in rows.items()}


def _curve_table(summary: dict, calls: str, seconds_decimals: int) -> list[str]:
    """The results table: one row per method and budget (``calls`` names the forward-pass column)."""
    lines = [f"| method | budget | coalitions scored | {calls} | seconds / example | mean relative L1 error |",
             "|---|---|---|---|---|---|"]
    for label, curve in summary.items():
        for point in curve:
            lines.append(f"| {label} | {point['budget']} | {point['coalitions']:.0f} | {point['forward_passes']:.0f} | "
                         f"{point['seconds']:.{seconds_decimals}f} | {point['rel_error']:.4f} |")
    return lines

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=("zoo", "llava-1.5"), default="zoo",
                    help="zoo: zoo:shapes-p90 (16 image tokens); llava-1.5: benchmarks/real_shapes.py's LLaVA-1.5 "
                         "shape (576 image tokens, random weights)")
    ap.add_argument("--examples", type=int, default=None, help="zoo: 6; llava-1.5: 2")
    ap.add_argument("--grid", type=int, default=None, help="zoo: 2; llava-1.5: mm_shap's rule, ceil(sqrt(#question))")
    ap.add_argument("--weights", choices=("random", "trained"), default="random",
                    help="llava-1.5: random weights (a near-additive game) or real_shapes.trained_llava() (a tiny "
                         "LLaVA trained on shapes-p50 at 336 px; trained on first use, about 15 min on 2 cores)")
    ap.add_argument("--max-players", type=int, default=None,
                    help="zoo: 12, --weights trained: 13 (examples with more are skipped); llava-1.5 random weights: "
                         "exact enumeration up to 14 players, a reference estimate above")
    ap.add_argument("--captum-samples", default=None,
                    help="zoo: 1,2,4,8; llava-1.5: 1,2,4; --weights trained: 1,2,4,8,16,32")
    ap.add_argument("--mbias-permutations", default=None,
                    help="zoo: 2,4,8,16,32,64; llava-1.5: 2,4,8,16; --weights trained: 2,4,8,16,32,64,128")
    ap.add_argument("--reference-permutations", type=int, default=32, help="llava-1.5: the reference's budget")
    ap.add_argument("--mmshap-max-evals", default="600,1200", help="llava-1.5: shap max_evals (600 = MM-SHAP's)")
    args = ap.parse_args()
    if args.shape == "llava-1.5":
        run_llava15(args)
    else:
        for key, value in (("examples", 6), ("grid", 2), ("max_players", 12), ("captum_samples", "1,2,4,8"),
                           ("mbias_permutations", "2,4,8,16,32,64")):
            if getattr(args, key) is None:
                setattr(args, key, value)
        run_zoo(args)


def run_zoo(args) -> None:
    started = time.perf_counter()

    from mbias.captum_input import ImageTextInput
    from mbias.models import ScoringConfig, load_model
    from mbias.shapley import exact_shapley, permutation_shapley
    from mbias.synth import load_synth

    torch.set_num_threads(torch.get_num_threads())
    adapters = {m: load_model("zoo:shapes-p90", device="cpu", config=ScoringConfig(masking=m, batch_size=256))
                for m in ("pixel", "feature")}
    ds = load_synth("shapes-p90/test-balanced")
    chosen = []
    for i in range(len(ds)):
        p = adapters["pixel"].prepare(ds[i])
        if p.n_question + adapters["pixel"].patch_groups(p, args.grid).n <= args.max_players:
            chosen.append(i)
        if len(chosen) == args.examples:
            break
    captum_budgets = [int(x) for x in args.captum_samples.split(",")]
    ours_budgets = [int(x) for x in args.mbias_permutations.split(",")]
    rows = {"captum (pixel game)": {b: [] for b in captum_budgets},
            "mbias (pixel game)": {b: [] for b in ours_budgets},
            "mbias (feature game, default)": {b: [] for b in ours_budgets}}
    exact_seconds = []
    for idx in chosen:
        ex = ds[idx]
        prepared = {m: a.prepare(ex) for m, a in adapters.items()}
        inputs = {m: ImageTextInput(adapters[m], prepared[m], args.grid, value="logprob") for m in adapters}
        n = inputs["pixel"].n_itp_features
        check_same_game(adapters["pixel"], prepared["pixel"], args.grid, inputs["pixel"].value, n)
        t0 = time.perf_counter()
        exact = {m: exact_shapley(inputs[m].value, n, batch_size=256).phi for m in inputs}
        exact_seconds.append(time.perf_counter() - t0)
        for b in captum_budgets:
            t0 = time.perf_counter()
            phi = captum_user_path(adapters["pixel"], prepared["pixel"], args.grid, b, seed=idx)
            # captum's ShapleyValueSampling: the baseline once, then one coalition per player per permutation,
            # each its own forward pass (LLMAttribution scores a single instance per forward call)
            rows["captum (pixel game)"][b].append((time.perf_counter() - t0, rel_error(phi, exact["pixel"]),
                                                   1 + b * n, 1 + b * n))
        for m, label in (("pixel", "mbias (pixel game)"), ("feature", "mbias (feature game, default)")):
            for b in ours_budgets:
                t0 = time.perf_counter()
                res = permutation_shapley(inputs[m].value, n, b, rng=np.random.default_rng(idx), batch_size=256)
                rows[label][b].append((time.perf_counter() - t0, rel_error(res.phi, exact[m]), res.n_evaluations,
                                       -(-res.n_evaluations // 256)))  # batches of up to 256 coalitions
        print(json.dumps({"example": ex.id, "players": n}), flush=True)

    summary = _summarise(rows)
    speedup = speedup_at_equal_error(summary["captum (pixel game)"], summary["mbias (pixel game)"])
    speedup_default = speedup_at_equal_error(summary["captum (pixel game)"], summary["mbias (feature game, default)"])
    meta = {"command": "python benchmarks/shapley_vs_captum.py", "examples": len(chosen), "grid": args.grid,
            "threads": torch.get_num_threads(), "device": "cpu", "date": time.strftime("%Y-%m-%d"),
            "exact_seconds_per_example": float(np.mean(exact_seconds))}
    header, provenance = results_header(wall_seconds=time.perf_counter() - started)
    OUT.mkdir(exist_ok=True)
    (OUT / "shapley_vs_captum.json").write_text(json.dumps(
        {"meta": meta, "provenance": provenance, "curves": summary, "speedup_pixel_game": speedup, "speedup_default": speedup_default},
        indent=2))
    lines = [f"# Shapley values: captum's generic path vs mbias ({meta['date']}, CPU, {meta['threads']} threads)",
             "", *header, "", f"`{meta['command']}`: zoo:shapes-p90, {len(chosen)} examples of synth:shapes-p90/test-balanced, "
             f"players = question tokens + {args.grid}x{args.grid} image cells (at most {args.max_players}); "
             "budget = captum n_samples (permutations) or mbias permutations (antithetic pairs).", "",
             *_curve_table(summary, "forward passes", seconds_decimals=3)]
    lines += ["", f"Exact enumeration (ground truth) took {meta['exact_seconds_per_example']:.2f} s per example.", "",
              f"Speed-up at equal error, same pixel-level game: {speedup['text']}",
              f"Speed-up at equal error, mbias default (feature-level) game: {speedup_default['text']}"]
    (OUT / "shapley_vs_captum.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[len(header) + 6:]))
    print(f"speed-up at equal error: {speedup['text']}")

def mmshap_scheme(value_fn, n: int, max_evals: int, seed: int) -> tuple[np.ndarray, int, int, int]:
    """MM-SHAP's released sampling scheme on this game: CC-SHAP-VLM calls ``shap.explainers.Permutation`` with
    max_evals 600, raised by 100 up to 900 while it is too low for the players (max_evals // (2n + 1) antithetic
    pairs). Returns (phi, coalitions scored, model calls, the max_evals that ran)."""
    from mm_shap_reference import import_shap

    shap = import_shap()
    seen = {"rows": 0, "calls": 0}

    def predict(rows):
        rows = np.asarray(rows).reshape(-1, n)
        seen["rows"] += len(rows)
        seen["calls"] += 1
        return value_fn(torch.from_numpy(rows > 0.5)).detach().float().cpu().numpy()

    def masker(mask, x):  # the players are the mask itself: the value function masks tokens and cells
        return np.asarray(mask, dtype=np.float64).reshape(1, -1)

    for budget in (max_evals, max_evals + 100, max_evals + 200, max_evals + 300):
        try:
            values = shap.explainers.Permutation(predict, masker, seed=seed)(np.ones((1, n)), max_evals=budget,
                                                                             silent=True).values[0]
            break
        except ValueError:
            continue
    else:
        raise ValueError(f"max_evals {max_evals + 300} is too low for {n} players (MM-SHAP's code fails here too)")
    return np.asarray(values, dtype=np.float64).reshape(-1), seen["rows"], seen["calls"], budget


LLAVA_LABELS = ("captum (pixel game)", "MM-SHAP's scheme: shap Permutation (pixel game)", "mbias (pixel game)",
                "mbias (feature game, default)")


def run_llava15(args) -> None:
    """The comparison at the LLaVA-1.5 shape: against exact values where the players are few enough to enumerate
    every coalition (the trained model's short questions), else against a high-budget reference estimate."""
    started = time.perf_counter()
    import real_shapes

    from mbias.captum_input import ImageTextInput
    from mbias.models import ScoringConfig, load_model, wrap_model
    from mbias.probes.mm_shap import reference_permutations
    from mbias.shapley import exact_shapley, permutation_shapley
    from mbias.synth import load_synth

    def ints(text):
        return [int(x) for x in text.split(",")]

    trained = args.weights == "trained"
    n_examples = args.examples or (6 if trained else 2)
    # random weights: mm_shap's rule, ceil(sqrt(#question tokens)), 6 for the POPE questions, and a reference
    # estimate; trained: the zoo comparison's 2x2 cells, so that the players (at most 13) can be enumerated (the
    # non-additive game leaves a reference estimate too noisy to judge the estimators by)
    grid = args.grid or (2 if trained else 6)
    max_players = args.max_players or (13 if trained else 14)
    captum_budgets = ints(args.captum_samples or ("1,2,4,8,16,32" if trained else "1,2,4"))
    ours_budgets = ints(args.mbias_permutations or ("2,4,8,16,32,64,128" if trained else "2,4,8,16"))
    shap_budgets = ints(args.mmshap_max_evals)
    half = max(2, args.reference_permutations // 2)
    batch = 32
    t0 = time.perf_counter()
    configs = {m: ScoringConfig(masking=m, batch_size=batch) for m in ("pixel", "feature")}
    folder = real_shapes.trained_llava() if trained else None
    if trained:
        scorers = {m: load_model(str(folder), device="cpu", config=c) for m, c in configs.items()}
        test = load_synth("shapes-p50/test-balanced")
        chosen_examples = []
        for i in range(len(test)):  # the first examples whose players can be enumerated
            p = scorers["pixel"].prepare(test[i])
            if p.n_question + scorers["pixel"].patch_groups(p, grid).n <= max_players:
                chosen_examples.append(test[i])
            if len(chosen_examples) == n_examples:
                break
    else:
        model, proc = real_shapes.build("llava-1.5")
        scorers = {m: wrap_model(model, proc, config=c, model_id="llava-1.5 shape (tiny width, random weights)")
                   for m, c in configs.items()}
        pool = real_shapes.examples(len(real_shapes.QUESTIONS))
        n_question = [scorers["pixel"].prepare(ex).n_question for ex in pool]
        chosen_examples = [pool[i] for i in sorted(range(len(pool)), key=lambda i: (abs(n_question[i] - 34), i))
                           [:n_examples]]
    build_seconds = time.perf_counter() - t0
    budgets = dict(zip(LLAVA_LABELS, (captum_budgets, shap_budgets, ours_budgets, ours_budgets), strict=True))
    rows = {label: {b: [] for b in bs} for label, bs in budgets.items()}
    per_example = []
    for idx, ex in enumerate(chosen_examples):
        prepared = {m: s.prepare(ex) for m, s in scorers.items()}
        inputs = {m: ImageTextInput(scorers[m], prepared[m], grid, value="logprob") for m in scorers}
        n = inputs["pixel"].n_itp_features
        check_same_game(scorers["pixel"], prepared["pixel"], grid, inputs["pixel"].value, n)
        info = {"example": ex.id, "question_tokens": prepared["pixel"].n_question, "image_cells": n -
                prepared["pixel"].n_question, "players": n, "prompt_tokens": len(prepared["pixel"].prompt_ids),
                "image_tokens": int(prepared["pixel"].image_positions.numel()),
                "mmshap_reference_permutations_at_600": reference_permutations(n, 600)}
        ref = {}
        for m in scorers:
            t0 = time.perf_counter()
            if n <= max_players:
                truth = exact_shapley(inputs[m].value, n, batch_size=batch)
                ref[m], noise, coalitions, v_full, v_empty = truth.phi, 0.0, truth.n_evaluations, truth.v_full, \
                    truth.v_empty
            else:
                # two independent halves, seeded apart from every estimate below: their mean is the reference,
                # half their L1 distance estimates the reference's own L1 error
                h = [permutation_shapley(inputs[m].value, n, half, rng=np.random.default_rng(10_000 * (k + 1) + idx),
                                         batch_size=batch) for k in (0, 1)]
                ref[m] = 0.5 * (h[0].phi + h[1].phi)
                noise = float(0.5 * np.abs(h[0].phi - h[1].phi).sum() / max(np.abs(ref[m]).sum(), 1e-12))
                coalitions, v_full, v_empty = h[0].n_evaluations + h[1].n_evaluations, h[0].v_full, h[0].v_empty
            info[m] = {"exact": n <= max_players, "reference_seconds": time.perf_counter() - t0,
                       "reference_permutations": None if n <= max_players else 2 * half,
                       "reference_coalitions": coalitions, "reference_noise": noise, "v_full": v_full,
                       "v_empty": v_empty, "phi_l1": float(np.abs(ref[m]).sum()), "phi_sum": float(ref[m].sum())}
        for b in captum_budgets:
            t0 = time.perf_counter()
            phi = captum_user_path(scorers["pixel"], prepared["pixel"], grid, b, seed=idx)
            rows[LLAVA_LABELS[0]][b].append((time.perf_counter() - t0, rel_error(phi, ref["pixel"]), 1 + b * n,
                                             1 + b * n))
        for b in shap_budgets:
            t0 = time.perf_counter()
            phi, coalitions, calls, used = mmshap_scheme(inputs["pixel"].value, n, b, seed=idx)
            rows[LLAVA_LABELS[1]][b].append((time.perf_counter() - t0, rel_error(phi, ref["pixel"]), coalitions,
                                             calls))
            info.setdefault("mmshap_max_evals_run", {})[str(b)] = used
        for m, label in (("pixel", LLAVA_LABELS[2]), ("feature", LLAVA_LABELS[3])):
            for b in ours_budgets:
                t0 = time.perf_counter()
                res = permutation_shapley(inputs[m].value, n, b, rng=np.random.default_rng(idx), batch_size=batch)
                rows[label][b].append((time.perf_counter() - t0, rel_error(res.phi, ref[m]), res.n_evaluations,
                                       -(-res.n_evaluations // batch)))
        per_example.append(info)
        print(json.dumps(info), flush=True)

    summary = _summarise(rows)
    captum, shap_curve, ours_pixel, ours_feature = (summary[label] for label in LLAVA_LABELS)
    speedups = {"captum_vs_mbias_pixel_game": speedup_at_equal_error(captum, ours_pixel),
                "captum_vs_mbias_default": speedup_at_equal_error(captum, ours_feature),
                "mmshap_vs_mbias_pixel_game": speedup_at_equal_error(shap_curve, ours_pixel),
                "mmshap_vs_mbias_default": speedup_at_equal_error(shap_curve, ours_feature),
                # MM-SHAP's own budget (max_evals 600) alone
                "mmshap_600_vs_mbias_pixel_game": speedup_at_equal_error(shap_curve[:1], ours_pixel),
                "mmshap_600_vs_mbias_default": speedup_at_equal_error(shap_curve[:1], ours_feature),
                # where captum's every budget is less accurate than mbias's smallest, the rule above prices mbias at
                # its smallest budget (a lower bound); this extrapolates captum's own curve to mbias's errors instead
                "captum_vs_mbias_pixel_game_extrapolated": extrapolated_speedup(captum, ours_pixel),
                "captum_vs_mbias_default_extrapolated": extrapolated_speedup(captum, ours_feature),
                # the mirror of the first rule: for each mbias budget whose error captum's measured curve spans, captum's
                # interpolated time at that error (no extrapolation, no lower bound)
                "captum_vs_mbias_pixel_game_at_mbias_errors": speedup_at_our_errors(captum, ours_pixel),
                "captum_vs_mbias_default_at_mbias_errors": speedup_at_our_errors(captum, ours_feature)}
    exact = all(e["pixel"]["exact"] for e in per_example)
    noise = {m: float(np.mean([e[m]["reference_noise"] for e in per_example])) for m in scorers}
    suffix = "_trained" if trained else ""
    command = "python benchmarks/shapley_vs_captum.py --shape llava-1.5" + (" --weights trained" if trained else "")
    meta = {"command": command, "shape": "llava-1.5", "weights": args.weights,
            "model": folder.name if trained else "random weights",
            "examples": len(chosen_examples), "grid": grid, "threads": torch.get_num_threads(), "device": "cpu",
            "date": time.strftime("%Y-%m-%d"), "build_seconds": build_seconds, "batch_size": batch,
            "ground_truth": "exact" if exact else "reference", "reference_permutations": None if exact else 2 * half,
            "reference_noise": noise,
            "reference_seconds_per_example": float(np.mean([sum(e[m]["reference_seconds"] for m in scorers)
                                                            for e in per_example]))}
    if trained:
        record = json.loads((folder / "zoo.json").read_text())
        meta["model_eval"] = record["eval"]
        meta["model_train_config"] = record["train_config"]
    header, provenance = results_header(wall_seconds=time.perf_counter() - started)
    OUT.mkdir(exist_ok=True)
    (OUT / f"shapley_vs_captum_llava15{suffix}.json").write_text(json.dumps(
        {"meta": meta, "provenance": provenance, "examples": per_example, "curves": summary, **speedups}, indent=2))
    q = ", ".join(str(e["question_tokens"]) for e in per_example)
    players = ", ".join(str(e["players"]) for e in per_example)
    prompts = ", ".join(str(e["prompt_tokens"]) for e in per_example)
    if trained:
        acc = meta["model_eval"]
        model_text = (f"a tiny LLaVA trained at that geometry (`real_shapes.trained_llava()`: the zoo's recipe on "
                      f"synth:shapes-p50, {meta['model_train_config']['steps']} steps of "
                      f"{meta['model_train_config']['batch_size']}; test-balanced accuracy {acc['test-balanced']['accuracy']:.2f}), "
                      f"{len(chosen_examples)} examples of synth:shapes-p50/test-balanced")
    else:
        model_text = f"random weights), {len(chosen_examples)} POPE-style questions"
    lines = [f"# Shapley values at the LLaVA-1.5 shape, {'trained' if trained else 'random'} weights: captum, "
             f"MM-SHAP's sampling and mbias ({meta['date']}, CPU, {meta['threads']} threads)", "", *header, "",
             f"`{command}`: `benchmarks/real_shapes.py`'s LLaVA-1.5 shape (CLIP at 336 px, patch 14, "
             f"{per_example[0]['image_tokens']} image tokens; 2-layer, 64-wide language model; {model_text} of {q} "
             f"question tokens ({prompts} prompt tokens with the image); players = question tokens + {grid}x{grid} "
             f"image cells ({players} players); value = log p(gold answer). Budget = captum n_samples "
             "(permutations), shap max_evals (MM-SHAP's released code: 600, i.e. "
             + ", ".join(str(e["mmshap_reference_permutations_at_600"]) for e in per_example)
             + " permutations for these players), or mbias permutations (antithetic pairs).", ""]
    if exact:
        lines += [f"Errors are against exact Shapley values (every coalition of each game enumerated, "
                  f"{meta['reference_seconds_per_example']:.0f} s per example for both games).", ""]
    else:
        lines += [f"No exact values at this many players: the error is against a reference, mbias's estimator with "
                  f"{2 * half} antithetic permutations per game and example in two independent halves, seeded apart "
                  f"from the estimates. Its own relative L1 error, from the halves' disagreement: {noise['pixel']:.3f} "
                  f"(pixel game), {noise['feature']:.3f} (feature game); errors near that are at the reference's "
                  f"noise floor. Reference estimates took {meta['reference_seconds_per_example']:.0f} s per example "
                  "(both games).", ""]
    lines += _curve_table(summary, "model calls", seconds_decimals=2)
    lines += ["", f"The games ({'trained' if trained else 'random'} weights): "
              + "; ".join(f"{e['example']}: v(N) - v(empty) = {e['pixel']['v_full'] - e['pixel']['v_empty']:+.4f} "
                          f"(pixel), {e['feature']['v_full'] - e['feature']['v_empty']:+.4f} (feature), "
                          f"||phi||_1 = {e['pixel']['phi_l1']:.4f} / {e['feature']['phi_l1']:.4f}"
                          for e in per_example)
              + ". In an additive game every permutation gives the exact values and every estimator's error is 0; "
              "the error of one antithetic pair (mbias, budget 2) measures how far from additive these games are.",
              "", f"Speed-up at equal error, captum vs mbias, same pixel-level game: "
              f"{speedups['captum_vs_mbias_pixel_game']['text']}",
              f"Speed-up at equal error, captum vs mbias default (feature-level) game: "
              f"{speedups['captum_vs_mbias_default']['text']}",
              "Where captum's error at a budget is above mbias's at its smallest, the two lines above price mbias at "
              "its smallest budget (mbias more accurate there), a lower bound. The other way round, captum's time "
              "interpolated on its measured curve at the errors mbias's budgets reach (only those inside captum's "
              f"range): {speedups['captum_vs_mbias_pixel_game_at_mbias_errors']['text']} on the pixel-level game, "
              f"{speedups['captum_vs_mbias_default_at_mbias_errors']['text']} against the default game. "
              "Extrapolating captum's own curve (log time against log error, fitted through its budgets) to every "
              f"error mbias reaches: {speedups['captum_vs_mbias_pixel_game_extrapolated']['text']} on the pixel-level "
              f"game, {speedups['captum_vs_mbias_default_extrapolated']['text']} against the default game.",
              f"Speed-up at equal error, MM-SHAP's scheme (shap Permutation, max_evals {','.join(map(str, shap_budgets))}) "
              f"vs mbias, same pixel-level game: {speedups['mmshap_vs_mbias_pixel_game']['text']}; at its own budget "
              f"(600) alone: {speedups['mmshap_600_vs_mbias_pixel_game']['text']}",
              f"Speed-up at equal error, MM-SHAP's scheme vs mbias default (feature-level) game: "
              f"{speedups['mmshap_vs_mbias_default']['text']}; at its own budget (600) alone: "
              f"{speedups['mmshap_600_vs_mbias_default']['text']}"]
    (OUT / f"shapley_vs_captum_llava15{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[len(header) + 2:]))


def speedup_at_our_errors(theirs: list[dict], ours: list[dict]) -> dict:
    """For each mbias point whose error lies inside captum's measured range, captum's time at that error (log-log
    interpolation between captum's budgets); the median ratio over those mbias budgets."""
    te = np.log([max(p["rel_error"], 1e-9) for p in theirs])
    tt = np.log([p["seconds"] for p in theirs])
    order = np.argsort(te)
    points = []
    for p in ours:
        e = np.log(max(p["rel_error"], 1e-9))
        if te.min() <= e <= te.max():
            t_theirs = float(np.exp(np.interp(e, te[order], tt[order])))
            points.append({"mbias_budget": p["budget"], "mbias_seconds": p["seconds"], "error": p["rel_error"],
                           "captum_seconds": t_theirs, "ratio": t_theirs / p["seconds"]})
    if not points:
        return {"median": None, "points": [], "text": "none (every mbias budget is more accurate than captum's best)"}
    med = float(np.median([r["ratio"] for r in points]))
    return {"median": med, "points": points,
            "text": f"{med:.1f}x median over the {len(points)} mbias budgets inside captum's range"}


def extrapolated_speedup(theirs: list[dict], ours: list[dict]) -> dict:
    """captum's time at each mbias point's error, from a line through captum's points in log error / log time
    (extrapolated, not measured); the median ratio over mbias's budgets."""
    if len(theirs) < 2:
        return {"median": None, "points": [], "text": "not extrapolable (fewer than two captum budgets)"}
    slope, intercept = np.polyfit(np.log([max(p["rel_error"], 1e-9) for p in theirs]),
                                  np.log([p["seconds"] for p in theirs]), 1)
    points = []
    for p in ours:
        t_theirs = float(np.exp(intercept + slope * np.log(max(p["rel_error"], 1e-9))))
        points.append({"mbias_seconds": p["seconds"], "error": p["rel_error"], "captum_seconds": t_theirs,
                       "ratio": t_theirs / p["seconds"]})
    med = float(np.median([r["ratio"] for r in points]))
    return {"median": med, "slope": float(slope), "points": points,
            "text": f"{med:.0f}x median over mbias's budgets (captum's seconds ~ error^{slope:.2f})"}


def speedup_at_equal_error(theirs: list[dict], ours: list[dict]) -> dict:
    """For each captum point, mbias's time at the same error (log-log interpolation); the median ratio."""
    ot = np.log([p["seconds"] for p in ours])
    oe = np.log([max(p["rel_error"], 1e-9) for p in ours])
    order = np.argsort(oe)
    ratios = []
    for p in theirs:
        e = np.log(max(p["rel_error"], 1e-9))
        if e < oe.min():  # captum more accurate than any of our budgets: compare with our best, conservatively
            continue
        t_ours = float(np.exp(np.interp(e, oe[order], ot[order])))
        ratios.append({"captum_seconds": p["seconds"], "error": p["rel_error"], "mbias_seconds": t_ours,
                       "ratio": p["seconds"] / t_ours})
    if not ratios:
        return {"median": None, "points": [], "text": "not measurable (no overlapping error range)"}
    med = float(np.median([r["ratio"] for r in ratios]))
    lo = min(ratios, key=lambda r: r["ratio"])
    return {"median": med, "points": ratios,
            "text": f"{med:.1f}x median over captum budgets (lowest {lo['ratio']:.1f}x at error {lo['error']:.3f})"}


if __name__ == "__main__":
    main()
