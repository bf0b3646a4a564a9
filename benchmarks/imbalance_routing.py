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

import numpy as np
import yaml
from imbalance import (
    BASES,
    CONFIGS,
    ID_TOLERANCE,
    METRICS,
    OUT,
    VAL,
    evaluate,
    evaluate_val,
    train_and_evaluate,
)
from recipe_comparison import fmt, summarise

# the recipes that steer parameter groups, and the settings tried on val (seed 0) per grouping; a recipe with one
# setting gets no selection run: its file holds the defaults, flagged
GRID = {"miles": [{}, {"mu": 0.33}], "ogm_ge": [{}], "cggm": [{}]}
ROUTING = {"": "module-level groups", "_routed": "routed groups"}


def label(recipe: str, suffix: str) -> str:
    return ("plain" if recipe == "lora" else recipe) + (" routed" if suffix else "")


def config_name(recipe: str, suffix: str) -> str:
    return f"lora/{'plain' if recipe == 'lora' else recipe}{suffix}"


def run_selection(args) -> None:
    from mbias.config import load_yaml

    lines = [f"# Routed vs module-level groups: settings chosen on val ({time.strftime('%Y-%m-%d')})", "",
             "`python benchmarks/imbalance_routing.py --select`", "",
             f"{BASES[0]} with LoRA r32 on vision tower, projector and LLM (configs/imbalance/lora/), seed 0, one run "
             f"per setting; val-balanced = {VAL['val-balanced']}, val = {VAL['val']} (in-distribution), "
             f"{args.n_val} examples each; differences paired with plain LoRA of the same grouping. No test split "
             "is read.", ""]
    for suffix, grouping in ROUTING.items():
        plain = config_name("lora", suffix)
        results = {"plain": {0: train_and_evaluate("select", plain, 0, args, evaluate_val)[0]}}
        settings = {}
        for recipe, grid in GRID.items():
            for rc in grid if len(grid) > 1 else []:
                name = recipe + ("" if not rc else " " + json.dumps(rc, sort_keys=True))
                overrides = {"recipe": recipe, "recipe_config": rc}
                results[name] = {0: train_and_evaluate("select", plain, 0, args, evaluate_val, overrides)[0]}
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
        for recipe, grid in GRID.items():
            best.setdefault(recipe, (f"{recipe} (default; " + ("one setting, not tuned" if len(grid) == 1 else
                                                                "no setting met the floor") + ")", None, {}))
        base = load_yaml(CONFIGS / f"{plain}.yaml")
        for recipe, (name, _, rc) in best.items():
            path = CONFIGS / f"{config_name(recipe, suffix)}.yaml"
            head = (f"# The routing benchmark's {recipe} arm, {grouping} (benchmarks/imbalance_routing.py), at the "
                    f"setting chosen on val\n# by `python benchmarks/imbalance_routing.py --select` ({name}; "
                    "results/imbalance_routing_selection.md).\n"
                    f"# Reproduce: mbias finetune --config benchmarks/configs/imbalance/{config_name(recipe, suffix)}"
                    ".yaml --out DIR\n")
            path.write_text(head + yaml.safe_dump({**base, "recipe": recipe, "recipe_config": rc}, sort_keys=False))
        lines += [f"## {grouping}", "", "| setting | val-balanced | vs plain | val | vs plain |", "|---|---|---|---|---|"]
        for name, r in table.items():
            lines.append(f"| {name} | {fmt(r['val-balanced'])} | {fmt(r.get('val-balanced vs plain'), True)} | "
                         f"{fmt(r['val'])} | {fmt(r.get('val vs plain'), True)} |")
        lines += ["", "Best per recipe (highest val-balanced with val within "
                  f"{ID_TOLERANCE:.2f} of plain's): " + "; ".join(f"{r}: `{b[0]}`" for r, b in best.items()), ""]
    OUT.mkdir(exist_ok=True)
    (OUT / "imbalance_routing_selection.md").write_text("\n".join(lines))
    print("\n".join(lines))


def run_comparison(args) -> None:
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = [(label(r, sfx), config_name(r, sfx)) for r in ("lora", *GRID) for sfx in ROUTING]
    results, timing = {}, {}
    for lab, name in arms:
        results[lab], per = {}, []
        for s in seeds:
            results[lab][s], sps = train_and_evaluate("compare", name, s, args, evaluate)
            per.append(sps)
            r = results[lab][s]
            print(json.dumps({"run": lab, "seed": s, **{m: round(float(np.mean(r[m]["correct"])), 3)
                                                          for m in ("test-cp", "test-id", "image-only")}}), flush=True)
        timing[lab] = float(np.mean(per))
    categories = sorted(set(results["plain"][seeds[0]]["test-cp"]["category"]))
    table = summarise(results, METRICS + [f"test-cp/{c}" for c in categories], reference="plain")
    routed_vs_module = {r: summarise({r: results[r], f"{r} routed": results[f"{r} routed"]}, METRICS,
                                     reference=r)[f"{r} routed"] for r in ("plain", *GRID)}
    meta = {"command": "python benchmarks/imbalance_routing.py", "bases": [BASES[s] for s in seeds],
            "n_eval": args.n_eval, "n_audit": args.n_audit, "n_probe": args.n_probe,
            "date": time.strftime("%Y-%m-%d"),
            "configs": {lab: (CONFIGS / f"{name}.yaml").read_text() for lab, name in arms}}
    OUT.mkdir(exist_ok=True)
    (OUT / "imbalance_routing.json").write_text(json.dumps(
        {"meta": meta, "rows": table, "routed_vs_module": routed_vs_module, "seconds_per_step": timing}, indent=2))
    names = {"test-cp": "test-cp", "test-id": "test-id", "test-balanced": "test-balanced",
             "image-only": "image-only", "probe": "vision probe", "audit/vision_share": "vision share",
             "audit/follows_text": "follows wording"}
    lines = [f"# Routed vs module-level groups in the learning-speed benchmark ({meta['date']})", "",
             f"`{meta['command']}`", "",
             f"Bases {', '.join(meta['bases'])} (run i: build i, seed i) with LoRA r32 on the vision tower, projector "
             "and LLM, synth:shapes-p90/train, 800 steps x batch 64, lr 2e-3 cosine (configs/imbalance/lora/). "
             f"{meta['n_eval']} examples per split, audit probes on {meta['n_audit']}, probe fitted on "
             f"{meta['n_probe']} images. Mean [95% hierarchical bootstrap]; in brackets after a mean, the difference "
             "paired with module-level plain LoRA.", "",
             "| arm | " + " | ".join(names.values()) + " | s/step |", "|---" * (len(names) + 2) + "|"]
    for lab, r in table.items():
        cells = [fmt(r[m]) if lab == "plain" else f"{r[m]['mean']:.3f} ({fmt(r.get(f'{m} vs plain'), True)})"
                 for m in names]
        lines.append(f"| {lab} | " + " | ".join(cells) + f" | {timing[lab]:.3f} |")
    lines += ["", "Routed minus module-level, same recipe (paired by run and example):", "",
              "| recipe | " + " | ".join(names.values()) + " |", "|---" * (len(names) + 1) + "|"]
    for r, row in routed_vs_module.items():
        lines.append(f"| {r} | " + " | ".join(fmt(row.get(f"{m} vs {r}"), True) for m in names) + " |")
    lines += ["", "Per question type, test-cp accuracy per run (build 0, 1, 2): whether a run learns a type against "
              "the wording is what moves the means", "", "| arm | " + " | ".join(categories) + " |",
              "|---" * (len(categories) + 1) + "|"]
    for lab, r in table.items():
        lines.append(f"| {lab} | " + " | ".join(" / ".join(f"{v:.2f}" for v in r[f"test-cp/{c}"]["per_run"])
                                                  for c in categories) + " |")
    for split in ("test-cp", "test-id", "image-only"):
        lines += ["", f"Per run (build 0, 1, 2), {split}:", ""]
        lines += [f"- {lab}: " + ", ".join(f"{v:.3f}" for v in r[split]["per_run"]) for lab, r in table.items()]
    (OUT / "imbalance_routing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--select", action="store_true", help="try the recipes' settings on val data instead")
    ap.add_argument("--seeds", default="0,1,2", help="base builds / training seeds")
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--n-audit", type=int, default=200)
    ap.add_argument("--n-probe", type=int, default=3000)
    ap.add_argument("--n-val", type=int, default=400)
    args = ap.parse_args()
    run_selection(args) if args.select else run_comparison(args)


if __name__ == "__main__":
    main()
