"""Do the recipes reduce the planted wording bias? Every recipe against plain LoRA, at an equal budget, on several
base builds.

Protocol. Base builds: zoo:shapes-p90 trained with seeds 0, 1, 2 (``zoo:shapes-p90``, ``-seed1``, ``-seed2``): how
strongly the prior survives differs between builds (results/zoo_spread.md), so a finding on one build is not a
finding. Run i fine-tunes base build i with seed i on synth:shapes-p90/train (the same biased data), 200 steps x
batch 32, lr 1e-3, LoRA r=16 on the LLM and the projector. Measured on base build i:
- accuracy on test-cp (the cue is always wrong), test-id and test-balanced (no correlation), 500 examples each,
  and per question type: on 2-answer types "not the cue" *is* the answer on test-cp, so an anti-prior model
  would look good there; test-balanced splits into examples where the cue holds (an "anything but the cue"
  model fails them) and where it does not;
- an image-swap control on test-cp (each question with the next example's image): a model that looks falls to
  what the other image says; one that answers "not the cue" without looking stays above that;
- the audit's language share (modality_shapley) and its follows-the-wording rate (the conflict probe) on 200
  test-balanced examples;
- how many cue-contradicting examples training saw, and how well each bias expert predicts the prior.
Intervals: hierarchical bootstrap (runs, then examples); differences against plain LoRA are paired by run and
example. Settings are chosen with ``--select`` on held-out val data (never a test split): accuracy on
synth:shapes-p00/val (balanced, 400) with synth:shapes-p90/val (in-distribution, 400) beside it.

    python benchmarks/recipe_comparison.py --select     # -> results/recipe_selection.{json,md}, ~10 min
    python benchmarks/recipe_comparison.py              # -> results/recipe_comparison.{json,md}, ~30 min

Finished runs are reused when the script is interrupted (keyed by everything that shapes them, the base build's
zoo key included). Per-step cost is benchmarks/recipe_cost.py.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mbias.stats import bootstrap_hierarchical

OUT = Path(__file__).parent / "results"
WORK = Path("/tmp/mbias-recipe-comparison")
TRAIN_DATA, BALANCED_DATA = "synth:shapes-p90/train", "synth:shapes-p00/train"
BASES = {0: "zoo:shapes-p90", 1: "zoo:shapes-p90-seed1", 2: "zoo:shapes-p90-seed2"}
UNBIASED = "zoo:shapes-p00"
SPLITS = ("test-cp", "test-balanced", "test-id")
VAL = {"val-balanced": "synth:shapes-p00/val", "val": "synth:shapes-p90/val"}

# The comparison's arms. poe / lmh / mdpo at the settings that won on val (results/recipe_selection.md), plus
# poe with the label-free default expert and LPF; the seed balancing recipes at their defaults (their own benchmark
# is the learning-speed scenario).
ARMS = [
    ("lora", "lora", {}),
    ("poe", "poe", {"bias_expert": "prior_table"}),
    ("poe-no_image", "poe", {"bias_expert": "no_image"}),
    ("poe-lpf-no_image", "poe", {"bias_expert": "no_image", "mode": "lpf"}),
    ("lmh", "lmh", {"bias_expert": "prior_table", "entropy_weight": 0.1}),
    ("mdpo", "mdpo", {"corruption": "crop", "rejected_answer": "no_image", "beta": 1.0}),
    ("msam", "msam", {}), ("miles", "miles", {}), ("mnl", "mnl", {}), ("cggm", "cggm", {}), ("ogm_ge", "ogm_ge", {}),
    ("lora-on-unbiased-data", "lora", {"data": BALANCED_DATA}),
]
# --select: every setting tried, one run each on base build 0
GRID = [
    ("lora", "lora", {}),
    ("lora-on-unbiased-data", "lora", {"data": BALANCED_DATA}),
    *[(f"poe-{e}-{m}", "poe", {"bias_expert": e, "mode": m})
      for e in ("no_image", "masked_image", "prior_table") for m in ("product", "lpf")],
    ("poe-no_image-product-tokens", "poe", {"bias_expert": "no_image", "answer_space": "tokens"}),
    *[(f"lmh-{e}-H{w}", "lmh", {"bias_expert": e, "entropy_weight": w})
      for e in ("no_image", "prior_table") for w in (0.36, 0.1, 1.0)],
    *[(f"mdpo-{c}-{r}-b{b}", "mdpo", {"corruption": c, "rejected_answer": r, "beta": b})
      for c in ("blank", "crop") for r in ("none", "no_image") for b in (0.1, 0.5)],
    ("mdpo-crop-no_image-b1.0", "mdpo", {"corruption": "crop", "rejected_answer": "no_image", "beta": 1.0}),
]
REFERENCE = "lora-on-unbiased-data"  # not a recipe: how far a model that stops following the cue falls in-distribution


def _predictions(scorer, examples, swap: bool = False) -> dict:
    import torch

    out = {"correct": [], "category": [], "cue": [], "cue_right": []}
    for i, ex in enumerate(examples):
        p = scorer.prepare(ex)
        if swap:  # every patch replaced by the next example's image
            other = examples[(i + 1) % len(examples)].image
            pred = scorer.predict(p, torch.zeros(1, scorer.patch_groups(p).n, dtype=torch.bool), baseline="swap",
                                   swap_image=other)
        else:
            pred = scorer.predict(p)
        out["correct"].append(float(pred.correct))
        out["category"].append(ex.category)
        out["cue"].append(float(pred.text == ex.meta["cue_answer"]))
        out["cue_right"].append(bool(ex.meta["follows_prior"]))
    return out


def evaluate(base: str, adapter_dir: Path | None, n_eval: int, n_audit: int) -> dict:
    from mbias.models import load_model
    from mbias.probes import PROBES, SampleContext
    from mbias.synth import load_synth

    scorer = load_model(base, adapter=str(adapter_dir) if adapter_dir else None, device="cpu")
    out = {}
    for split in SPLITS:
        ds = load_synth(f"shapes-p90/{split}")
        out[split] = _predictions(scorer, [ds[i] for i in range(n_eval)])
    ds = load_synth("shapes-p90/test-cp")
    out["swap"] = _predictions(scorer, [ds[i] for i in range(n_eval)], swap=True)
    ds = load_synth("shapes-p90/test-balanced")
    shapley, conflict = PROBES.get("modality_shapley")(), PROBES.get("conflict")()
    shares, follows = [], []
    for i in range(n_audit):
        ctx = SampleContext(scorer, scorer.prepare(ds[i]))
        shares.append(shapley.run(ctx)["language_share"])
        follows.append(conflict.run(ctx)["follows_text"])
    out["audit"] = {"language_share": [np.nan if s is None else s for s in shares],
                    "follows_text": [np.nan if f is None else f for f in follows]}
    return out


def evaluate_val(base: str, adapter_dir: Path | None, n: int) -> dict:
    from mbias.data import load_data
    from mbias.models import load_model

    scorer = load_model(base, adapter=str(adapter_dir) if adapter_dir else None, device="cpu")
    return {name: _predictions(scorer, load_data(ref, max_samples=n).examples) for name, ref in VAL.items()}


def expert_quality(base: str, n: int) -> dict:
    """How well each bias expert predicts the prior: its accuracy on test-id (the prior holds ~90%) and how often
    it answers with the cue on test-cp (where the cue is always wrong). An ideal expert: ~0.9 and 1.0."""
    import torch

    from mbias.data import load_data
    from mbias.finetune.bias_expert import PriorTable
    from mbias.models import load_model
    from mbias.synth import load_synth

    scorer = load_model(base, device="cpu")
    table = PriorTable(load_data(TRAIN_DATA).examples, 0)
    out = {}
    for split in ("test-id", "test-cp"):
        ds = load_synth(f"shapes-p90/{split}")
        rows = {"no_image": [], "masked_image": [], "prior_table": []}
        for i in range(n):
            ex = ds[i]
            preds = {"no_image": scorer.predict(scorer.prepare(ex, with_image=False)).text}
            p = scorer.prepare(ex)
            preds["masked_image"] = scorer.predict(p, torch.zeros(1, scorer.patch_groups(p).n, dtype=torch.bool)).text
            lp = table.log_probs(ex.question, ex.choices)
            preds["prior_table"] = ex.choices[int(np.argmax(lp))]
            for k, v in preds.items():
                rows[k].append(v == (ex.answer if split == "test-id" else ex.meta["cue_answer"]))
        out[split] = {k: float(np.mean(v)) for k, v in rows.items()}
    return out


def train_and_evaluate(name, recipe, config, base_seed, args, evaluator, tag) -> tuple[dict, float]:
    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.run import run_finetune
    from mbias.zoo import model_identity

    base = BASES[base_seed]
    out = WORK / f"{tag}-{name}-s{base_seed}"
    ft = {k[3:]: v for k, v in config.items() if k.startswith("ft.")}
    data = config.get("data", TRAIN_DATA)
    rc = {k: v for k, v in config.items() if not k.startswith("ft.") and k != "data"}
    # a finished run with the same settings is reused; the base build's identity (zoo key) is part of it
    key = {"recipe": recipe, "recipe_config": rc, "ft": ft, "steps": args.steps, "lr": args.lr, "seed": base_seed,
           "data": data, "base_model": model_identity(base), "eval": tag, "n_eval": args.n_eval,
           "n_audit": args.n_audit, "version": 2}
    cached = out / "comparison-eval.json"
    saved = json.loads(cached.read_text()) if cached.exists() else None
    if saved and saved["key"] == key:
        return saved["result"], saved["seconds_per_step"]
    run_finetune(base, data, out, progress=False, config=FinetuneConfig(
        recipe=recipe, max_steps=args.steps, learning_rate=args.lr, per_device_train_batch_size=32, seed=base_seed,
        recipe_config=rc, **ft))
    sps = json.loads((out / "recipe.json").read_text())["seconds_per_step"]
    result = evaluator(base, out)
    cached.write_text(json.dumps({"key": key, "seconds_per_step": sps, "result": result}))
    return result, sps


def fmt(stat, signed: bool = False) -> str:
    if stat is None or stat["mean"] is None:
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(stat['mean'])} [{f.format(stat['ci95'][0])}, {f.format(stat['ci95'][1])}]"


def _values(result: dict, metric: str) -> np.ndarray:
    """Per-example values of a metric: SPLIT, SPLIT/CATEGORY, test-balanced/cue-right|cue-wrong, swap, or
    audit/FIELD."""
    if metric.startswith("audit/"):
        return np.asarray(result["audit"][metric[6:]], dtype=float)
    split, _, sub = metric.partition("/")
    r = result[split]
    correct = np.asarray(r["correct"], dtype=float)
    if not sub:
        return correct
    if sub in ("cue-right", "cue-wrong"):
        keep = np.asarray(r["cue_right"]) == (sub == "cue-right")
    else:
        keep = np.asarray(r["category"]) == sub
    return np.where(keep, correct, np.nan)


def summarise(results: dict[str, dict[int, dict]], metrics: list[str], reference: str = "lora") -> dict:
    rows = {}
    for name, runs in results.items():
        row = {}
        for m in metrics:
            vals = {s: _values(r, m) for s, r in runs.items()}
            row[m] = bootstrap_hierarchical({s: v[~np.isnan(v)] for s, v in vals.items()})
            if name != reference and reference in results:
                diff = {}
                for s, v in vals.items():
                    d = v - _values(results[reference][s], m)
                    diff[s] = d[~np.isnan(d)]
                row[f"{m} vs {reference}"] = bootstrap_hierarchical(diff)
        rows[name] = row
    return rows


def run_selection(args) -> None:
    results, timing = {}, {}
    for name, recipe, config in GRID:
        res, sps = train_and_evaluate(name, recipe, config, 0, args,
                                      lambda base, out: evaluate_val(base, out, args.n_val), "select")
        results[name], timing[name] = {0: res}, sps
        print(json.dumps({"run": name, **{k: round(float(np.mean(v["correct"])), 3) for k, v in res.items()}}),
              flush=True)
    metrics = list(VAL)
    table = summarise(results, metrics)
    # best = highest balanced-val accuracy among the settings whose in-distribution val accuracy does not fall
    # below the unbiased-data reference's: losing more than a model that simply stopped following the cue is damage
    floor = table[REFERENCE]["val"]["mean"]
    best = {}
    for name, recipe, config in GRID:
        score = table[name]["val-balanced"]["mean"]
        if name == REFERENCE or table[name]["val"]["mean"] < floor:
            continue
        if recipe not in best or score > best[recipe][1]:
            best[recipe] = (name, score, config)
    meta = {"command": "python benchmarks/recipe_comparison.py --select", "base": BASES[0], "steps": args.steps,
            "lr": args.lr, "n_val": args.n_val, "date": time.strftime("%Y-%m-%d")}
    OUT.mkdir(exist_ok=True)
    (OUT / "recipe_selection.json").write_text(json.dumps(
        {"meta": meta, "rows": table, "best": {r: {"run": b[0], "config": b[2]} for r, b in best.items()}}, indent=2))
    lines = [f"# Recipe settings chosen on held-out val data ({meta['date']})", "", f"`{meta['command']}`", "",
             f"{BASES[0]} fine-tuned on {TRAIN_DATA}, {args.steps} steps x batch 32, lr {args.lr}, seed 0 (one run "
             f"per setting). val-balanced = {VAL['val-balanced']} (the cue does not predict the answer), val = "
             f"{VAL['val']} (in-distribution); {args.n_val} examples each, 95% bootstrap over examples; differences "
             "paired with plain LoRA. No test split is read.", "",
             "| setting | val-balanced | vs lora | val (in-distribution) | vs lora | s/step |", "|---|---|---|---|---|---|"]
    for name, _, _ in GRID:
        r = table[name]
        lines.append(f"| {name} | {fmt(r['val-balanced'])} | {fmt(r.get('val-balanced vs lora'), True)} | "
                     f"{fmt(r['val'])} | {fmt(r.get('val vs lora'), True)} | {timing[name]:.3f} |")
    lines += ["", f"Best setting per recipe: the highest val-balanced accuracy among settings whose in-distribution val "
              f"accuracy stays at or above the unbiased-data reference's ({floor:.3f}; a model that stops following a "
              "90% cue must lose some in-distribution accuracy, more than that is damage): " + "; ".join(
                  f"{r}: `{b[0]}` {json.dumps(b[2])}" for r, b in best.items()) + "."]
    (OUT / "recipe_selection.md").write_text("\n".join(lines) + "\n")
    print((OUT / "recipe_selection.md").read_text())


def run_comparison(args) -> None:
    from mbias.data import load_data

    seeds = [int(s) for s in args.seeds.split(",")]
    arms = [(n, r, c) for n, r, c in ARMS if not args.arms or n in args.arms.split(",")]
    results = {"before fine-tuning": {s: evaluate(BASES[s], None, args.n_eval, args.n_audit) for s in seeds}}
    looks = evaluate(UNBIASED, None, args.n_eval, args.n_audit)  # what a model that looks scores on the controls
    results[f"{UNBIASED} (unbiased, not fine-tuned)"] = dict.fromkeys(seeds, looks)
    experts = {s: expert_quality(BASES[s], args.n_eval) for s in seeds}
    timing = {}
    for name, recipe, config in arms:
        results[name], per = {}, []
        for s in seeds:
            t0 = time.perf_counter()
            results[name][s], sps = train_and_evaluate(
                name, recipe, config, s, args, lambda base, out: evaluate(base, out, args.n_eval, args.n_audit),
                "compare")
            per.append(sps)
            r = results[name][s]
            print(json.dumps({"run": name, "base": BASES[s], **{m: round(float(np.mean(r[m]["correct"])), 3)
                                                                  for m in SPLITS},
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        timing[name] = float(np.mean(per))

    categories = sorted(set(results["lora"][seeds[0]]["test-cp"]["category"]))
    metrics = ["test-cp", "test-balanced", "test-id", "audit/follows_text", "audit/language_share",
               "test-balanced/cue-right", "test-balanced/cue-wrong", "swap",
               *[f"test-cp/{c}" for c in categories], *[f"test-balanced/{c}" for c in categories]]
    table = summarise(results, metrics)
    train = load_data(TRAIN_DATA).examples
    n_wrong = sum(not ex.meta["follows_prior"] for ex in train)
    seen = args.steps * 32
    meta = {"command": "python benchmarks/recipe_comparison.py" + (f" --arms {args.arms}" if args.arms else ""),
            "bases": [BASES[s] for s in seeds], "steps": args.steps, "lr": args.lr, "batch_size": 32,
            "n_eval": args.n_eval, "n_audit": args.n_audit, "date": time.strftime("%Y-%m-%d"),
            "cue_contradicting_train": n_wrong, "train_size": len(train),
            "cue_contradicting_seen": round(n_wrong * seen / len(train))}
    OUT.mkdir(exist_ok=True)
    (OUT / "recipe_comparison.json").write_text(json.dumps(
        {"meta": meta, "rows": table, "seconds_per_step": timing, "experts": experts}, indent=2))
    write_markdown(table, timing, experts, meta, seeds, categories)


def write_markdown(table, timing, experts, meta, seeds, categories) -> None:
    lora_sps = timing.get("lora")
    lines = [f"# Recipe comparison ({meta['date']})", "", f"`{meta['command']}`", "",
             f"Base builds {', '.join(meta['bases'])} (run i fine-tunes build i with seed i), each fine-tuned on "
             f"{TRAIN_DATA} for {meta['steps']} steps x batch 32, lr {meta['lr']}, LoRA r=16 on the LLM and the "
             f"projector. Accuracy on {meta['n_eval']} examples per split; follows-wording rate (conflict probe) "
             f"and language share (modality_shapley) on {meta['n_audit']} test-balanced examples. Mean over runs "
             "[95% hierarchical bootstrap over runs and examples]; differences paired with plain LoRA by run and "
             f"example. Training draws {meta['steps'] * 32} examples from {meta['train_size']}, of which "
             f"{meta['cue_contradicting_train']} contradict the cue: about {meta['cue_contradicting_seen']} "
             "cue-contradicting examples seen per run. Settings of poe / lmh / mdpo: chosen on val "
             "(results/recipe_selection.md).", "",
             "| recipe | test-cp | vs lora | test-balanced | vs lora | test-id | vs lora | follows wording | vs lora "
             "| language share | vs lora | s/step (x lora) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in table.items():
        sps = timing.get(name)
        cost = "-" if sps is None else f"{sps:.3f} ({sps / lora_sps:.2f}x)" if lora_sps else f"{sps:.3f}"
        lines.append(" | ".join([f"| {name}"] + [x for m in ("test-cp", "test-balanced", "test-id",
                                                               "audit/follows_text", "audit/language_share")
                                                  for x in (fmt(r[m]), fmt(r.get(f"{m} vs lora"), True))] + [cost])
                     + " |")
    ref = table.get(REFERENCE)
    if ref and ref["test-cp vs lora"]["mean"]:
        gap = ref["test-cp vs lora"]["mean"]
        lines += ["", f"Share of the test-cp gap between plain LoRA and LoRA on unbiased data ({gap:+.3f}) that each "
                  "recipe closes: " + ", ".join(f"{name} {r['test-cp vs lora']['mean'] / gap:.0%}"
                                               for name, r in table.items()
                                               if "test-cp vs lora" in r and name not in (REFERENCE, "lora")
                                               and not name.startswith(("before", UNBIASED))) + "."]
    lines += ["", "Controls. test-balanced where the cue holds / does not hold (an \"anything but the cue\" model "
              "scores low on the first); test-cp with each question shown the next example's image (a model that "
              "looks drops toward what the other image shows; one that answers \"not the cue\" without looking "
              "stays high).", "",
              "| recipe | test-balanced, cue holds | test-balanced, cue wrong | swapped image, test-cp | vs lora |",
              "|---|---|---|---|---|"]
    for name, r in table.items():
        lines.append(f"| {name} | {fmt(r['test-balanced/cue-right'])} | {fmt(r['test-balanced/cue-wrong'])} | "
                     f"{fmt(r['swap'])} | {fmt(r.get('swap vs lora'), True)} |")
    for split in ("test-cp", "test-balanced"):
        lines += ["", f"Per question type, {split} accuracy (answers per type: colour 6, shape 4, count 3, position 2, "
                  "exists 2):", "", "| recipe | " + " | ".join(categories) + " |", "|---" * (len(categories) + 1) + "|"]
        for name, r in table.items():
            lines.append(f"| {name} | " + " | ".join(f"{r[f'{split}/{c}']['mean']:.3f}" for c in categories) + " |")
    lines += ["", "How well each bias expert predicts the prior, per base build: accuracy on test-id (the prior holds "
              "there about 90% of the time) / cue-following on test-cp (1.0 = always predicts the prior):", "",
              "| base build | no_image | masked_image | prior_table |", "|---|---|---|---|"]
    for s in seeds:
        e = experts[s]
        lines.append(f"| {meta['bases'][seeds.index(s)]} | " + " | ".join(
            f"{e['test-id'][k]:.3f} / {e['test-cp'][k]:.3f}" for k in ("no_image", "masked_image", "prior_table"))
            + " |")
    for split in ("test-cp", "test-id"):
        lines += ["", f"Per run (base build 0, 1, 2), {split}:", ""]
        lines += [f"- {name}: " + ", ".join(f"{v:.3f}" for v in r[split]["per_run"]) for name, r in table.items()]
    (OUT / "recipe_comparison.md").write_text("\n".join(lines) + "\n")
    print((OUT / "recipe_comparison.md").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--select", action="store_true", help="try the settings grid on val data instead")
    ap.add_argument("--arms", help="comma-separated arm names (default: all)")
    ap.add_argument("--seeds", default="0,1,2", help="base builds / fine-tuning seeds")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--n-audit", type=int, default=200)
    ap.add_argument("--n-val", type=int, default=400)
    args = ap.parse_args()
    run_selection(args) if args.select else run_comparison(args)


if __name__ == "__main__":
    main()
