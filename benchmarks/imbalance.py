"""Do the seed balancing recipes help where their premise holds? The learning-speed imbalance benchmark.

Scenario (issue 16). A tiny LLaVA at its random initialisation (``zoo:scratch``, ``-seed1``, ``-seed2``) trained
with every parameter (``tune: full``) on synth:shapes-p90/train for 800 steps x batch 64: the question's wording
predicts the answer 90% of the time and is learned in tens of steps, while the colours, shapes, counts and
positions the pictures show take hundreds. This is the seed papers' regime: one modality is easier, and the
other side's encoder (here the ViT and projector) is trained at the same time. test-cp is where the wording is
wrong. Reference: the same training on synth:shapes-p00/train, where the wording predicts nothing and every
signal comes from the picture (the "image-trained" bound on how well the vision side can learn in the budget).

Measured per run (run i: base build i, training seed i):
- accuracy on test-cp, test-id and test-balanced (500 examples each);
- image-only accuracy: test-balanced with the question masked (the answer choices still name the question type);
- a linear probe of the vision side: the projector's output features (what the LLM sees) -> the answer, one
  logistic regression per question type, fitted on 3,000 synth:shapes-p00/train images and scored on the 500
  test-balanced ones;
- the audit's vision share (1 - modality_shapley's language share) and follows-the-wording rate (conflict probe)
  on 200 test-balanced examples.
Intervals: hierarchical bootstrap over runs, then examples; differences paired with plain training.

Arms: ``benchmarks/configs/imbalance/NAME.yaml``, each reproducible alone with
``mbias finetune --config FILE --out DIR``; ``--select`` tries each recipe's settings on val data (seed 0; never a
test split) and writes the winner into its file.

    python benchmarks/imbalance.py --select    # -> results/imbalance_selection.md + configs/imbalance/*.yaml
    python benchmarks/imbalance.py             # -> results/imbalance.{json,md}

Finished runs are reused when the script is interrupted (keyed by everything that shapes them).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from recipe_comparison import _predictions, fmt, summarise

HERE = Path(__file__).parent
OUT, CONFIGS = HERE / "results", HERE / "configs" / "imbalance"
WORK = Path("/tmp/mbias-imbalance")
UNBIASED_TRAIN = "synth:shapes-p00/train"
SPLITS = ("test-cp", "test-id", "test-balanced")
VAL = {"val-balanced": "synth:shapes-p00/val", "val": "synth:shapes-p90/val"}
RECIPES = ("msam", "miles", "mnl", "cggm", "ogm_ge")
REFERENCE = "plain on unbiased data"
# --select: the settings tried per recipe (defaults first); the papers' ranges where they give one
GRID = {
    "lora": [{}],
    "miles": [{}, {"mu": 0.33}],
    "ogm_ge": [{}, {"alpha": 0.8}],
    "msam": [{}],
    "mnl": [{}],
    "cggm": [{}],
}
ID_TOLERANCE = 0.02  # the bar: no loss on in-distribution accuracy beyond 2 points


def scratch_build(seed: int) -> str:
    """The zoo build run ``seed`` starts from: zoo:scratch with training seed ``seed`` (another random init)."""
    return "zoo:scratch" + (f"-seed{seed}" if seed else "")


def arm_config(name: str, seed: int, overrides: dict | None = None, base=None):
    """(FinetuneConfig, model, data) of arm ``name`` (its YAML file) for run ``seed``: base build and seed swapped
    (``base``: seed -> the model to train instead of zoo build ``seed``)."""
    from mbias.config import build_config, load_yaml
    from mbias.finetune.config import FinetuneConfig

    path = CONFIGS / f"{name}.yaml"
    values = {**load_yaml(path), **(overrides or {}), "seed": seed}
    values.pop("model")
    data = values.pop("data")
    return build_config(FinetuneConfig, values, where=str(path)), base_model(seed, base), data


def base_model(seed: int, base=None) -> str:
    """The model run ``seed`` trains: ``base(seed)``, or zoo build ``seed``."""
    return base(seed) if base else scratch_build(seed)


def has_remote_code(model: str) -> bool:
    """Whether a model folder brings its own modelling code (config.json's auto_map), to load with
    trust_remote_code: the late-fusion control's models (late_fusion_model.py)."""
    config = Path(model) / "config.json"
    return config.exists() and "auto_map" in json.loads(config.read_text())


def vision_probe(scorer, n_train: int, n_test: int) -> dict:
    """Per test-balanced example: is a linear read-out of the projector's features right? One logistic regression
    per question type (the answer is a property of the picture given the type)."""
    import torch

    from mbias.synth import load_synth

    def features(ds, n):
        rows, cats, answers = [], [], []
        for start in range(0, n, 256):
            exs = [ds[i] for i in range(start, min(n, start + 256))]
            with torch.no_grad():
                rows.append(scorer.image_features_for([e.image for e in exs]).flatten(1).float())
            cats += [e.category for e in exs]
            answers += [e.choices.index(e.answer) for e in exs]
        return torch.cat(rows), np.asarray(cats), torch.tensor(answers)

    xtr, ctr, ytr = features(load_synth("shapes-p00/train"), n_train)
    xte, cte, yte = features(load_synth("shapes-p90/test-balanced"), n_test)
    correct = np.zeros(len(cte))
    torch.manual_seed(0)
    for cat in sorted(set(ctr)):
        tr, te = ctr == cat, cte == cat
        mu, sd = xtr[tr].mean(0), xtr[tr].std(0) + 1e-6
        a, b = (xtr[tr] - mu) / sd, (xte[te] - mu) / sd
        head = torch.nn.Linear(a.shape[1], int(ytr[tr].max()) + 1)
        opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-3)
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(a), ytr[tr]).backward()
            opt.step()
        with torch.no_grad():
            correct[te] = (head(b).argmax(1) == yte[te]).numpy()
    return {"correct": correct.tolist(), "category": cte.tolist()}


def _scorer(out: str):
    """The trained arm: a model folder (tune: full), or a LoRA adapter (routed or not) over the base it names."""
    from mbias.models import load_model

    if (Path(out) / "adapter_config.json").exists():
        base = json.loads((Path(out) / "recipe.json").read_text())["model"]
        return load_model(base, device="cpu", adapter=out, trust_remote_code=has_remote_code(base))
    return load_model(out, device="cpu", trust_remote_code=has_remote_code(out))


def evaluate(model_dir: str, args) -> dict:
    from mbias.probes import PROBES, SampleContext
    from mbias.synth import load_synth
    from mbias.variants import MASK

    scorer = _scorer(model_dir)
    out = {}
    for split in SPLITS:
        ds = load_synth(f"shapes-p90/{split}")
        out[split] = _predictions(scorer, [ds[i] for i in range(args.n_eval)])
    ds = load_synth("shapes-p90/test-balanced")
    shapley, conflict = PROBES.get("modality_shapley")(), PROBES.get("conflict")()
    image_only = {"correct": [], "category": []}
    shares, follows = [], []
    for i in range(args.n_eval):
        ctx = SampleContext(scorer, scorer.prepare(ds[i]))
        image_only["correct"].append(float(ctx.outcome(text=MASK).correct))
        image_only["category"].append(ds[i].category)
        if i < args.n_audit:
            share = shapley.run(ctx)["language_share"]
            shares.append(np.nan if share is None else 1.0 - share)
            f = conflict.run(ctx)["follows_text"]
            follows.append(np.nan if f is None else f)
    out["image-only"] = image_only
    out["probe"] = vision_probe(scorer, args.n_probe, args.n_eval)
    out["audit"] = {"vision_share": shares, "follows_text": follows}
    return out


def evaluate_val(model_dir: str, args) -> dict:
    from mbias.data import load_data

    scorer = _scorer(model_dir)
    return {name: _predictions(scorer, load_data(ref, max_samples=args.n_val).examples) for name, ref in VAL.items()}


def train_and_evaluate(tag: str, name: str, seed: int, args, evaluator, overrides: dict | None = None, base=None):
    """Train arm ``name`` (with ``overrides``; on ``base(seed)`` instead of the zoo build) for run ``seed`` unless an
    identical run is cached, and evaluate it (``tag``: which evaluation). A selection run of seed 0 is the
    comparison's run when its setting wins."""
    from mbias.finetune.run import run_finetune
    from mbias.models import LoadOptions
    from mbias.zoo import model_identity

    config, model, data = arm_config(name, seed, overrides, base)
    label = config.recipe + "".join(f"-{k}{v}" for k, v in sorted(config.recipe_config.items())) + \
        ("" if data == arm_config("lora", seed)[2] else "-" + data.replace(":", "-").replace("/", "-")) + \
        ("" if config.tune == "full" else f"-lora{config.lora_r}") + ("-routed" if config.lora_routing else "") + \
        (f"-sgd-lr{config.learning_rate:g}" if getattr(config.optim, "value", config.optim) == "sgd" else "") + \
        (f"-n{config.max_train_samples}" if config.max_train_samples else "") + \
        ("" if base is None else f"-{Path(model).parent.name}")  # a built base: WORK/NAME/s{seed}
    out = WORK / f"{label}-s{seed}"
    settings = config.mbias_dict()
    settings.pop("output_dir", None)
    train_key = json.loads(json.dumps({"config": settings, "model": model_identity(model), "data": data,
                                       "version": 1}))
    trained = out / "benchmark-train.json"
    saved = json.loads(trained.read_text()) if trained.exists() else None
    if not saved or saved["key"] != train_key:
        t0 = time.perf_counter()
        run_finetune(model, data, out, config=config, progress=False,
                     load=LoadOptions(trust_remote_code=has_remote_code(model)))
        sps = json.loads((out / "recipe.json").read_text()).get("seconds_per_step",
                                                                (time.perf_counter() - t0) / config.max_steps)
        saved = {"key": train_key, "seconds_per_step": sps}
        trained.write_text(json.dumps(saved))
        for old in out.glob("benchmark-eval-*.json"):
            old.unlink()
    eval_key = {k: getattr(args, k) for k in ("n_eval", "n_audit", "n_probe", "n_val")}
    evaluated = out / f"benchmark-eval-{tag}.json"
    cached = json.loads(evaluated.read_text()) if evaluated.exists() else None
    if cached and cached["key"] == eval_key:
        return cached["result"], saved["seconds_per_step"]
    result = evaluator(str(out), args)
    evaluated.write_text(json.dumps({"key": eval_key, "result": result}))
    return result, saved["seconds_per_step"]


def run_selection(args) -> None:
    import yaml

    from mbias.config import load_yaml

    results, timing, settings = {}, {}, {}
    for recipe, grid in GRID.items():
        for rc in grid:
            name = recipe + ("" if not rc else " " + json.dumps(rc, sort_keys=True))
            overrides = {"recipe": recipe, "recipe_config": rc}
            res, sps = train_and_evaluate("select", "lora", 0, args, evaluate_val, overrides)
            results[name], timing[name], settings[name] = {0: res}, sps, (recipe, rc)
            print(json.dumps({"run": name, **{k: round(float(np.mean(v["correct"])), 3) for k, v in res.items()},
                              "s/step": round(sps, 3)}), flush=True)
    table = summarise(results, list(VAL), reference="lora")
    floor = table["lora"]["val"]["mean"] - ID_TOLERANCE
    best = {}
    for name, (recipe, rc) in settings.items():
        score = table[name]["val-balanced"]["mean"]
        if recipe == "lora" or table[name]["val"]["mean"] < floor:
            continue
        if recipe not in best or score > best[recipe][1]:
            best[recipe] = (name, score, rc)
    for recipe in RECIPES:  # no setting kept in-distribution accuracy: the default, flagged in the file
        best.setdefault(recipe, (f"{recipe} (default; no setting met the floor)", None, {}))
    base = load_yaml(CONFIGS / "lora.yaml")
    for recipe, (name, _, rc) in best.items():
        text = (f"# The learning-speed imbalance benchmark's {recipe} arm (benchmarks/imbalance.py), at the setting\n"
                f"# chosen on val by `python benchmarks/imbalance.py --select` ({name}; "
                "results/imbalance_selection.md).\n"
                f"# Reproduce: mbias finetune --config benchmarks/configs/imbalance/{recipe}.yaml --out DIR\n")
        body = {**base, "recipe": recipe, "recipe_config": rc}
        (CONFIGS / f"{recipe}.yaml").write_text(text + yaml.safe_dump(body, sort_keys=False))
    meta = {"command": "python benchmarks/imbalance.py --select", "base": scratch_build(0), "n_val": args.n_val,
            "date": time.strftime("%Y-%m-%d")}
    OUT.mkdir(exist_ok=True)
    (OUT / "imbalance_selection.json").write_text(json.dumps(
        {"meta": meta, "rows": table, "best": {r: {"run": b[0], "config": b[2]} for r, b in best.items()}}, indent=2))
    lines = [f"# Imbalance benchmark: settings chosen on val ({meta['date']})", "", f"`{meta['command']}`", "",
             f"{scratch_build(0)} trained with every parameter on synth:shapes-p90/train (configs/imbalance/lora.yaml: 800 "
             f"steps x batch 64, lr 2e-3), seed 0, one run per setting. val-balanced = {VAL['val-balanced']} (the "
             f"wording predicts nothing), val = {VAL['val']} (in-distribution); {args.n_val} examples each, 95% "
             "bootstrap over examples, differences paired with plain training. No test split is read.", "",
             "| setting | val-balanced | vs plain | val (in-distribution) | vs plain | s/step |",
             "|---|---|---|---|---|---|"]
    for name in settings:
        r = table[name]
        lines.append(f"| {name} | {fmt(r['val-balanced'])} | {fmt(r.get('val-balanced vs lora'), True)} | "
                     f"{fmt(r['val'])} | {fmt(r.get('val vs lora'), True)} | {timing[name]:.3f} |")
    lines += ["", f"Best per recipe: the highest val-balanced accuracy among settings whose in-distribution val "
              f"accuracy stays within {ID_TOLERANCE:.2f} of plain training's ({floor:.3f} or more): " + "; ".join(
                  f"{r}: `{b[0]}`" for r, b in best.items()) + ". Written to benchmarks/configs/imbalance/."]
    (OUT / "imbalance_selection.md").write_text("\n".join(lines) + "\n")
    print((OUT / "imbalance_selection.md").read_text())


ARMS = [("plain", "lora", None), *[(r, r, None) for r in RECIPES],
        (REFERENCE, "lora", {"data": UNBIASED_TRAIN})]
METRICS = ["test-cp", "test-id", "test-balanced", "image-only", "probe", "audit/vision_share", "audit/follows_text"]


def run_comparison(args) -> None:
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = [a for a in ARMS if not args.arms or a[0] in args.arms.split(",")]
    results = {"before training": {s: evaluate(str(_built(scratch_build(s))), args) for s in seeds}}
    timing = {}
    for label, name, overrides in arms:
        results[label], per = {}, []
        for s in seeds:
            results[label][s], sps = train_and_evaluate("compare", name, s, args, evaluate, overrides)
            per.append(sps)
            r = results[label][s]
            print(json.dumps({"run": label, "seed": s, **{m: round(float(np.mean(r[m]["correct"])), 3)
                                                            for m in (*SPLITS, "image-only", "probe")}}), flush=True)
        timing[label] = float(np.mean(per))
    categories = sorted(set(results["plain"][seeds[0]]["test-cp"]["category"]))
    metrics = METRICS + [f"test-cp/{c}" for c in categories] + [f"probe/{c}" for c in categories]
    table = summarise(results, metrics, reference="plain")
    meta = {"command": shlex.join(["python", "benchmarks/imbalance.py", *sys.argv[1:]]),
            "bases": [scratch_build(s) for s in seeds], "n_eval": args.n_eval, "n_audit": args.n_audit,
            "n_probe": args.n_probe, "date": time.strftime("%Y-%m-%d"),
            "configs": {label: (CONFIGS / f"{name}.yaml").read_text() for label, name, _ in arms}}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.out_name}.json").write_text(json.dumps({"meta": meta, "rows": table, "seconds_per_step": timing},
                                                          indent=2))
    write_markdown(table, timing, meta, seeds, categories, args.out_name)


def _built(ref: str) -> Path:
    from mbias.zoo import build_zoo_model

    return build_zoo_model(ref.removeprefix("zoo:"), progress=False)


def write_markdown(table, timing, meta, seeds, categories, name: str) -> None:
    names = {"test-cp": "test-cp", "test-id": "test-id", "test-balanced": "test-balanced",
             "image-only": "image-only", "probe": "vision probe", "audit/vision_share": "vision share",
             "audit/follows_text": "follows wording"}
    lines = [f"# Learning-speed imbalance benchmark ({meta['date']})", "", f"`{meta['command']}`", "",
             f"Base builds {', '.join(meta['bases'])} (random initialisation; run i trains build i with seed i), every "
             "parameter trained on synth:shapes-p90/train, 800 steps x batch 64, lr 2e-3 cosine "
             "(benchmarks/configs/imbalance/*.yaml). Accuracy on "
             f"{meta['n_eval']} examples per split; image-only = test-balanced with the question masked; vision probe "
             f"= linear read-out of the projector's features per question type (fitted on {meta['n_probe']} "
             f"synth:shapes-p00/train images, scored on test-balanced); vision share and follows-wording from the "
             f"audit's probes on {meta['n_audit']} test-balanced examples. Mean over runs [95% hierarchical "
             "bootstrap over runs and examples]; rows below the first give the difference paired with plain "
             "training.", "",
             "| arm | " + " | ".join(names.values()) + " | s/step |", "|---" * (len(names) + 2) + "|"]
    for label, r in table.items():
        cells = [fmt(r[m]) if label in ("plain", "before training") else
                 f"{r[m]['mean']:.3f} ({fmt(r.get(f'{m} vs plain'), True)})" for m in names]
        sps = timing.get(label)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'-' if sps is None else f'{sps:.3f}'} |")
    lines += ["", "Per question type, test-cp accuracy / vision probe accuracy:", "",
              "| arm | " + " | ".join(categories) + " |", "|---" * (len(categories) + 1) + "|"]
    for label, r in table.items():
        lines.append(f"| {label} | " + " | ".join(f"{r[f'test-cp/{c}']['mean']:.2f} / {r[f'probe/{c}']['mean']:.2f}"
                                                  for c in categories) + " |")
    for split in ("test-cp", "test-id", "image-only"):
        lines += ["", f"Per run (build {', '.join(map(str, seeds))}), {split}:", ""]
        lines += [f"- {label}: " + ", ".join(f"{v:.3f}" for v in r[split]["per_run"]) for label, r in table.items()]
    text = "\n".join(lines) + "\n"
    (OUT / f"{name}.md").write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--select", action="store_true", help="try each recipe's settings on val data instead")
    ap.add_argument("--arms", help="comma-separated arm names (default: all)")
    ap.add_argument("--out-name", default="imbalance", help="results/NAME.{json,md}: a run on other arms or builds "
                                                             "does not overwrite the main table")
    add_run_args(ap)
    args = ap.parse_args()
    run_selection(args) if args.select else run_comparison(args)


def add_run_args(ap: argparse.ArgumentParser) -> None:
    """The flags every imbalance script shares: which runs, and how many examples each evaluation reads."""
    ap.add_argument("--seeds", default="0,1,2", help="base builds / training seeds")
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--n-audit", type=int, default=200)
    ap.add_argument("--n-probe", type=int, default=3000)
    ap.add_argument("--n-val", type=int, default=400)


if __name__ == "__main__":
    main()
