"""Module-level vs modality-routed parameter groups for the recipes that steer groups, in the learning-speed benchmark.

The scenario of ``imbalance.py`` (zoo:scratch, synth:shapes-p90/train, 800 steps x batch 64, lr 2e-3 cosine), with
LoRA (rank 32) on the vision tower, the projector and the LLM instead of full training, so that the groups the
recipes steer are LoRA weights:

- module-level (``configs/imbalance/lora/NAME.yaml``): vision = the vision tower's and projector's LoRA, language =
  the LLM's LoRA. In a decoder MLLM the LLM is also where the two modalities meet, so slowing "language" slows
  the fusion too.
- routed (``configs/imbalance/lora/NAME_routed.yaml``, ``lora_routing: true``): the LLM's LoRA is a shared part at
  the base rate plus an image-token part (in the vision group) and a text-token part (the language group).

Arms: plain LoRA and the recipes whose step scales or perturbs a group (miles, ogm_ge, cggm), each both ways.
Measures as in ``imbalance.py`` (test-cp, test-id, test-balanced, image-only, vision probe, audited vision share
and follows-wording), 3 runs (build i, seed i), hierarchical bootstrap; differences paired with module-level plain
LoRA, and routed paired with module-level for the same recipe.

    python benchmarks/imbalance_routing.py --select  # -> results/imbalance_routing_selection.md + configs/imbalance/lora/
    python benchmarks/imbalance_routing.py           # -> results/imbalance_routing.{json,md}
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import yaml
from imbalance import (
    CONFIGS,
    ID_TOLERANCE,
    METRICS,
    OUT,
    REFERENCE,
    UNBIASED_TRAIN,
    VAL,
    add_run_args,
    base_model,
    evaluate,
    evaluate_val,
    train_and_evaluate,
)
from recipe_comparison import fmt, summarise


@dataclass(frozen=True)
class Suite:
    """A set of arms of the learning-speed scenario that differ from ``imbalance.py``'s in how they train."""

    script: str  # the benchmark script (results/STEM.{json,md}, results/STEM_selection.md)
    folder: str  # configs/imbalance/FOLDER/{plain,RECIPE}{SUFFIX}.yaml
    variants: dict  # config suffix -> what the variant is (several: a second table pairs each with the first)
    grid: dict  # recipe -> settings tried on val (seed 0); one setting: no selection run, defaults flagged
    title: str
    setup: str  # how the arms train, for the results files
    plain_grid: list = field(default_factory=lambda: [{}])  # plain's settings tried on val; the winner's go to all
    base: Callable[[int], str] | None = None  # seed -> the model each run trains (default: zoo build ``seed``)
    reference: bool = False  # also plain training on unbiased data (imbalance.py's bound on the vision side)
    finetune_flags: str = ""  # what `mbias finetune --config FILE` needs besides (e.g. "--trust-remote-code ")

    def bases(self, seeds) -> list[str]:
        return [base_model(s, self.base) for s in seeds]

    @property
    def stem(self) -> str:
        return self.script.removesuffix(".py")

    def label(self, recipe: str, suffix: str) -> str:
        return ("plain" if recipe == "lora" else recipe) + (f" {suffix.strip('_')}" if suffix else "")

    def config_name(self, recipe: str, suffix: str) -> str:
        return f"{self.folder}/{'plain' if recipe == 'lora' else recipe}{suffix}"


# the recipes that steer parameter groups, module-level and routed
ROUTING = Suite(
    script="imbalance_routing.py", folder="lora", variants={"": "module-level groups", "_routed": "routed groups"},
    grid={"miles": [{}, {"mu": 0.33}], "ogm_ge": [{}], "cggm": [{}]},
    title="Routed vs module-level groups",
    setup="with LoRA r32 on the vision tower, projector and LLM, synth:shapes-p90/train, 800 steps x batch 64, lr "
          "2e-3 cosine (configs/imbalance/lora/)")


def run_selection(args, suite: Suite = ROUTING) -> None:
    from mbias.config import load_yaml

    lines = [f"# {suite.title}: settings chosen on val ({time.strftime('%Y-%m-%d')})", "",
             f"`python benchmarks/{suite.script} --select`", "",
             f"{suite.bases([0])[0]} {suite.setup}, seed 0, one run per setting; val-balanced = {VAL['val-balanced']}, val = "
             f"{VAL['val']} (in-distribution), {args.n_val} examples each; differences paired with plain training "
             "of the same variant. No test split is read.", ""]
    for suffix, grouping in suite.variants.items():
        plain = suite.config_name("lora", suffix)
        base = load_yaml(CONFIGS / f"{plain}.yaml")
        results, settings = {}, {}
        for ps in suite.plain_grid:
            name = "plain" + ("" if not ps else " " + json.dumps(ps, sort_keys=True))
            results[name] = {0: train_and_evaluate("select", plain, 0, args, evaluate_val, ps, suite.base)[0]}
        if len(suite.plain_grid) > 1:  # plain's setting: the best on balanced val, the rest then use it
            scores = {n: float(np.mean(r[0]["val-balanced"]["correct"])) for n, r in results.items()}
            chosen = max(scores, key=scores.get)
            base.update(suite.plain_grid[list(results).index(chosen)])
            results = {"plain": results.pop(chosen), **{f"not chosen: {n}": r for n, r in results.items()}}
            (CONFIGS / f"{plain}.yaml").write_text(
                f"# The {suite.stem} benchmark's plain arm, {grouping}, at the setting chosen on val by\n"
                f"# `python benchmarks/{suite.script} --select` ({chosen}; results/{suite.stem}_selection.md).\n"
                f"# Reproduce: mbias finetune --config benchmarks/configs/imbalance/{plain}.yaml "
                f"{suite.finetune_flags}--out DIR\n"
                + yaml.safe_dump(base, sort_keys=False))
        for recipe, grid in suite.grid.items():
            for rc in grid if len(grid) > 1 else []:
                name = recipe + ("" if not rc else " " + json.dumps(rc, sort_keys=True))
                overrides = {"recipe": recipe, "recipe_config": rc}
                results[name] = {0: train_and_evaluate("select", plain, 0, args, evaluate_val, overrides, suite.base)[0]}
                settings[name] = (recipe, rc)
                print(json.dumps({"grouping": grouping, "run": name, **{
                    k: round(float(np.mean(v["correct"])), 3) for k, v in results[name][0].items()}}), flush=True)
        table = summarise(results, list(VAL), reference="plain")
        floor = table["plain"]["val"]["mean"] - ID_TOLERANCE
        best = {}
        for name, (recipe, rc) in settings.items():
            score = table[name]["val-balanced"]["mean"]
            if table[name]["val"]["mean"] >= floor and (recipe not in best or score > best[recipe][1]):
                best[recipe] = (name, score, rc)
        for recipe, grid in suite.grid.items():
            if len(grid) == 1:
                best[recipe] = (f"{recipe} {json.dumps(grid[0])} (one setting, not tuned)", None, grid[0])
            best.setdefault(recipe, (f"{recipe} (default; no setting met the floor)", None, {}))
        for recipe, (name, _, rc) in best.items():
            path = CONFIGS / f"{suite.config_name(recipe, suffix)}.yaml"
            head = (f"# The {suite.stem} benchmark's {recipe} arm, {grouping} (benchmarks/{suite.script}), at the "
                    f"setting chosen on val\n# by `python benchmarks/{suite.script} --select` ({name}; "
                    f"results/{suite.stem}_selection.md).\n"
                    "# Reproduce: mbias finetune --config benchmarks/configs/imbalance/"
                    f"{suite.config_name(recipe, suffix)}.yaml {suite.finetune_flags}--out DIR\n")
            path.write_text(head + yaml.safe_dump({**base, "recipe": recipe, "recipe_config": rc}, sort_keys=False))
        lines += [f"## {grouping}", "", "| setting | val-balanced | vs plain | val | vs plain |", "|---|---|---|---|---|"]
        for name, r in table.items():
            lines.append(f"| {name} | {fmt(r['val-balanced'])} | {fmt(r.get('val-balanced vs plain'), True)} | "
                         f"{fmt(r['val'])} | {fmt(r.get('val vs plain'), True)} |")
        lines += ["", "Best per recipe (highest val-balanced with val within "
                  f"{ID_TOLERANCE:.2f} of plain's): " + "; ".join(f"{r}: `{b[0]}`" for r, b in best.items()), ""]
    OUT.mkdir(exist_ok=True)
    (OUT / f"{suite.stem}_selection.md").write_text("\n".join(lines))
    print("\n".join(lines))


def run_comparison(args, suite: Suite = ROUTING) -> None:
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = [(suite.label(r, sfx), suite.config_name(r, sfx), None)
            for r in ("lora", *suite.grid) for sfx in suite.variants]
    if suite.reference:
        arms.append((REFERENCE, suite.config_name("lora", next(iter(suite.variants))), {"data": UNBIASED_TRAIN}))
    results, timing = {}, {}
    for lab, name, overrides in arms:
        results[lab], per = {}, []
        for s in seeds:
            results[lab][s], sps = train_and_evaluate("compare", name, s, args, evaluate, overrides, suite.base)
            per.append(sps)
            r = results[lab][s]
            print(json.dumps({"run": lab, "seed": s, **{m: round(float(np.mean(r[m]["correct"])), 3)
                                                          for m in ("test-cp", "test-id", "image-only")}}), flush=True)
        timing[lab] = float(np.mean(per))
    categories = sorted(set(results["plain"][seeds[0]]["test-cp"]["category"]))
    table = summarise(results, METRICS + [f"test-cp/{c}" for c in categories], reference="plain")
    first, *others = suite.variants
    pairs = {}  # each other variant paired with the first, recipe by recipe
    for recipe in ("lora", *suite.grid):
        a = suite.label(recipe, first)
        for sfx in others:
            b = suite.label(recipe, sfx)
            pairs[b] = {**summarise({a: results[a], b: results[b]}, METRICS, reference=a)[b], "vs": a}
    meta = {"command": f"python benchmarks/{suite.script}", "bases": suite.bases(seeds),
            "n_eval": args.n_eval, "n_audit": args.n_audit, "n_probe": args.n_probe,
            "date": time.strftime("%Y-%m-%d"),
            "configs": {lab: (CONFIGS / f"{name}.yaml").read_text() for lab, name, _ in arms}}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{suite.stem}.json").write_text(json.dumps(
        {"meta": meta, "rows": table, "pairs": pairs, "seconds_per_step": timing}, indent=2))
    names = {"test-cp": "test-cp", "test-id": "test-id", "test-balanced": "test-balanced",
             "image-only": "image-only", "probe": "vision probe", "audit/vision_share": "vision share",
             "audit/follows_text": "follows wording"}
    lines = [f"# {suite.title} in the learning-speed benchmark ({meta['date']})", "",
             f"`{meta['command']}`", "",
             f"Bases {', '.join(meta['bases'])} (run i: build i, seed i) {suite.setup}. "
             f"{meta['n_eval']} examples per split, audit probes on {meta['n_audit']}, probe fitted on "
             f"{meta['n_probe']} images. Mean [95% hierarchical bootstrap]; in brackets after a mean, the difference "
             f"paired with plain training ({suite.variants[first]}).", "",
             "| arm | " + " | ".join(names.values()) + " | s/step |", "|---" * (len(names) + 2) + "|"]
    for lab, r in table.items():
        cells = [fmt(r[m]) if lab == "plain" else f"{r[m]['mean']:.3f} ({fmt(r.get(f'{m} vs plain'), True)})"
                 for m in names]
        lines.append(f"| {lab} | " + " | ".join(cells) + f" | {timing[lab]:.3f} |")
    if pairs:
        lines += ["", f"Each arm minus the same recipe with {suite.variants[first]} (paired by run and example):", "",
                  "| arm | " + " | ".join(names.values()) + " |", "|---" * (len(names) + 1) + "|"]
    for b, row in pairs.items():
        lines.append(f"| {b} | " + " | ".join(fmt(row.get(f"{m} vs {row['vs']}"), True) for m in names) + " |")
    lines += ["", "Per question type, test-cp accuracy per run (build 0, 1, 2): whether a run learns a type against "
              "the wording is what moves the means", "", "| arm | " + " | ".join(categories) + " |",
              "|---" * (len(categories) + 1) + "|"]
    for lab, r in table.items():
        lines.append(f"| {lab} | " + " | ".join(" / ".join(f"{v:.2f}" for v in r[f"test-cp/{c}"]["per_run"])
                                                  for c in categories) + " |")
    for split in ("test-cp", "test-id", "image-only"):
        lines += ["", f"Per run (build 0, 1, 2), {split}:", ""]
        lines += [f"- {lab}: " + ", ".join(f"{v:.3f}" for v in r[split]["per_run"]) for lab, r in table.items()]
    (OUT / f"{suite.stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(suite: Suite = ROUTING, doc: str = __doc__) -> None:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--select", action="store_true", help="try the recipes' settings on val data instead")
    add_run_args(ap)
    args = ap.parse_args()
    run_selection(args, suite) if args.select else run_comparison(args, suite)


if __name__ == "__main__":
    main()
