"""Do the balancing recipes reduce the planted bias? Every recipe against plain LoRA, at an equal budget.

Protocol: start from zoo:shapes-p90 (a tiny LLaVA trained with a 90% language prior), fine-tune on
synth:shapes-p90/train (the same biased data) for the same number of steps and batch size with each recipe and
each seed; then measure counter-prior accuracy (test-cp, where the prior is always wrong), in-distribution accuracy
(test-id) and the audited vision share (modality_shapley on test-balanced). Intervals: hierarchical bootstrap
(seeds, then examples); differences against plain LoRA are paired by seed and example.

    python benchmarks/recipe_comparison.py [--recipes lora,msam,miles,mnl,cggm,ogm_ge] [--seeds 0,1,2]
        [--steps 200] [--variant NAME:RECIPE:JSON ...]

Writes benchmarks/results/recipe_comparison.{json,md}. Per-step cost is benchmarks/recipe_cost.py.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results"
WORK = Path("/tmp/mbias-recipe-comparison")
BASE_MODEL, TRAIN_DATA = "zoo:shapes-p90", "synth:shapes-p90/train"


def hierarchical(values: dict[int, np.ndarray], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean over seeds of per-seed means; CI by resampling seeds, then examples within each."""
    rng = np.random.default_rng(seed)
    seeds = sorted(values)
    means = [values[s].mean() for s in seeds]
    boots = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.choice(seeds, size=len(seeds))
        boots[b] = np.mean([values[s][rng.integers(0, len(values[s]), len(values[s]))].mean() for s in picked])
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"mean": float(np.mean(means)), "ci95": [float(lo), float(hi)], "per_seed": [float(m) for m in means]}


def evaluate(adapter_dir: Path, n_eval: int, n_audit: int) -> dict:
    from mbias.probes import PROBES, SampleContext

    from mbias.models import load_adapter
    from mbias.synth import load_synth

    adapter = load_adapter(BASE_MODEL, adapter=str(adapter_dir) if adapter_dir else None, device="cpu")
    out = {}
    for split in ("test-cp", "test-id"):
        ds = load_synth(f"shapes-p90/{split}")
        out[split] = [float(adapter.predict(adapter.prepare(ds[i])).correct) for i in range(n_eval)]
    ds = load_synth("shapes-p90/test-balanced")
    probe = PROBES.get("modality_shapley")()
    shares = []
    for i in range(n_audit):
        ctx = SampleContext(adapter, adapter.prepare(ds[i]), swap_image=ds[(i + 1) % len(ds)].image)
        shares.append(probe.run(ctx)["vision_share"])
    out["vision_share"] = [np.nan if s is None else s for s in shares]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="lora,msam,miles,mnl,cggm,ogm_ge")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra run NAME:RECIPE:JSON, the recipe's settings; keys starting with 'ft.' set the fine-tune "
                         "config instead, e.g. 'miles-bal:miles:{\"tau\":0.05,\"ft.eval_data\":\"synth:shapes-p00/val\"}', "
                         "and 'data' replaces the training data (a reference row, not a recipe)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--n-audit", type=int, default=200)
    args = ap.parse_args()

    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.run import run_finetune
    from mbias.zoo import model_identity

    runs = [(r, r, {}) for r in args.recipes.split(",") if r]
    for v in args.variant:
        name, recipe, cfg = v.split(":", 2)
        runs.append((name, recipe, json.loads(cfg)))
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {"base": evaluate(None, args.n_eval, args.n_audit)}
    timing = {}
    for name, recipe, recipe_config in runs:
        results[name], timing[name] = {}, []
        for seed in seeds:
            out = WORK / f"{name}-s{seed}"
            t0 = time.perf_counter()
            ft = {k[3:]: v for k, v in recipe_config.items() if k.startswith("ft.")}
            data = recipe_config.get("data", TRAIN_DATA)
            rc = {k: v for k, v in recipe_config.items() if not k.startswith("ft.") and k != "data"}
            # A finished run with the same settings is reused, so an interrupted comparison resumes where it stopped.
            # The base model's identity is part of it: a rebuilt zoo (new training config) must not reuse old runs.
            key = {"recipe": recipe, "recipe_config": rc, "ft": ft, "steps": args.steps, "lr": args.lr, "seed": seed,
                   "n_eval": args.n_eval, "n_audit": args.n_audit, "base_model": model_identity(BASE_MODEL)}
            if data != TRAIN_DATA:
                key["data"] = data
            cached = out / "comparison-eval.json"
            saved = json.loads(cached.read_text()) if cached.exists() else None
            if saved and saved["key"] == key:
                timing[name].append(saved["seconds_per_step"])
                results[name][seed] = saved["result"]
            else:
                run_finetune(BASE_MODEL, data, out, progress=False, config=FinetuneConfig(
                    recipe=recipe, max_steps=args.steps, lr=args.lr, batch_size=32, seed=seed, recipe_config=rc,
                    **ft))
                timing[name].append(json.loads((out / "recipe.json").read_text())["seconds_per_step"])
                results[name][seed] = evaluate(out, args.n_eval, args.n_audit)
                cached.write_text(json.dumps({"key": key, "seconds_per_step": timing[name][-1],
                                              "result": results[name][seed]}))
            r = results[name][seed]
            print(json.dumps({"run": name, "seed": seed, "test-cp": np.mean(r["test-cp"]),
                              "test-id": np.mean(r["test-id"]), "vision_share": float(np.nanmean(r["vision_share"])),
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)

    table = []
    for name, _, _ in runs:
        row = {"run": name, "seconds_per_step": float(np.mean(timing[name]))}
        for metric in ("test-cp", "test-id", "vision_share"):
            vals = {s: np.asarray(results[name][s][metric], dtype=float) for s in seeds}
            vals = {s: v[~np.isnan(v)] for s, v in vals.items()}
            row[metric] = hierarchical(vals)
            if name != "lora" and "lora" in results:
                diff = {}
                for s in seeds:
                    a = np.asarray(results[name][s][metric], dtype=float)
                    b = np.asarray(results["lora"][s][metric], dtype=float)
                    keep = ~(np.isnan(a) | np.isnan(b))
                    diff[s] = a[keep] - b[keep]
                row[f"{metric} vs lora"] = hierarchical(diff)
        table.append(row)
    base = {m: float(np.nanmean(results["base"][m])) for m in ("test-cp", "test-id", "vision_share")}
    meta = {"command": "python benchmarks/recipe_comparison.py " + " ".join(
        f"--variant '{v}'" for v in args.variant), "steps": args.steps, "lr": args.lr, "batch_size": 32,
        "seeds": seeds, "n_eval": args.n_eval, "n_audit": args.n_audit, "date": time.strftime("%Y-%m-%d")}
    OUT.mkdir(exist_ok=True)
    (OUT / "recipe_comparison.json").write_text(json.dumps({"meta": meta, "base": base, "rows": table}, indent=2))

    def f(stat):
        return f"{stat['mean']:.3f} [{stat['ci95'][0]:.3f}, {stat['ci95'][1]:.3f}]"

    def fd(row, metric):
        key = f"{metric} vs lora"
        return f"{row[key]['mean']:+.3f} [{row[key]['ci95'][0]:+.3f}, {row[key]['ci95'][1]:+.3f}]" if key in row else "-"

    lora_sps = next((r["seconds_per_step"] for r in table if r["run"] == "lora"), None)
    lines = [f"# Recipe comparison ({meta['date']})", "",
             f"`{meta['command']}`", "",
             f"zoo:shapes-p90 fine-tuned on synth:shapes-p90/train, {args.steps} steps x batch 32, lr {args.lr}, "
             f"LoRA r=16 on the LLM and the projector, seeds {seeds}. Accuracy on {args.n_eval} test-cp / test-id "
             f"examples; vision share = modality_shapley on {args.n_audit} test-balanced examples. Mean over seeds "
             "[95% hierarchical bootstrap]; differences paired with plain LoRA by seed and example.", "",
             f"Before fine-tuning: test-cp {base['test-cp']:.3f}, test-id {base['test-id']:.3f}, vision share "
             f"{base['vision_share']:.3f}.", "",
             "| recipe | test-cp | vs lora | test-id | vs lora | vision share | vs lora | s/step (x lora) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table:
        ratio = f"{r['seconds_per_step']:.3f} ({r['seconds_per_step'] / lora_sps:.2f}x)" if lora_sps else \
            f"{r['seconds_per_step']:.3f}"
        lines.append(f"| {r['run']} | {f(r['test-cp'])} | {fd(r, 'test-cp')} | {f(r['test-id'])} | "
                     f"{fd(r, 'test-id')} | {f(r['vision_share'])} | {fd(r, 'vision_share')} | {ratio} |")
    lines += ["", "Per seed, test-cp:", ""]
    lines += [f"- {r['run']}: " + ", ".join(f"{v:.3f}" for v in r["test-cp"]["per_seed"]) for r in table]
    (OUT / "recipe_comparison.md").write_text("\n".join(lines) + "\n")
    print((OUT / "recipe_comparison.md").read_text())


if __name__ == "__main__":
    main()
