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

Writes benchmarks/results/shapley_vs_captum.{json,md}.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=6)
    ap.add_argument("--grid", type=int, default=2)
    ap.add_argument("--max-players", type=int, default=12)
    ap.add_argument("--captum-samples", default="1,2,4,8")
    ap.add_argument("--mbias-permutations", default="2,4,8,16,32,64")
    args = ap.parse_args()
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

    summary = {}
    for label, by_budget in rows.items():
        summary[label] = [{"budget": b, "seconds": float(np.mean([r[0] for r in v])),
                           "rel_error": float(np.mean([r[1] for r in v])),
                           "coalitions": float(np.mean([r[2] for r in v])),
                           "forward_passes": float(np.mean([r[3] for r in v]))} for b, v in by_budget.items()]
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
             "| method | budget | coalitions scored | forward passes | seconds / example | mean relative L1 error |",
             "|---|---|---|---|---|---|"]
    for label, curve in summary.items():
        for point in curve:
            lines.append(f"| {label} | {point['budget']} | {point['coalitions']:.0f} | {point['forward_passes']:.0f} | "
                         f"{point['seconds']:.3f} | {point['rel_error']:.4f} |")
    lines += ["", f"Exact enumeration (ground truth) took {meta['exact_seconds_per_example']:.2f} s per example.", "",
              f"Speed-up at equal error, same pixel-level game: {speedup['text']}",
              f"Speed-up at equal error, mbias default (feature-level) game: {speedup_default['text']}"]
    (OUT / "shapley_vs_captum.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[len(header) + 6:]))
    print(f"speed-up at equal error: {speedup['text']}")


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
