"""The benchmark harness every recipe suite runs on: arms as config files, settings chosen on val with the same grid
budget for every compared arm (baselines included), runs over N builds, paired differences with intervals over
builds and "k of n builds", cost per step, one results folder per suite with its provenance.

    python benchmarks/harness.py SUITE --select          # -> results/SUITE/selection.{md,json}
    python benchmarks/harness.py SUITE --seeds 0-9       # -> results/SUITE/compare.{md,json}
    python benchmarks/harness.py --list                  # the suites (benchmarks/suites.py)

Protocol.
- An arm is a config file (``configs/SUITE/ARM.yaml``, the ``mbias finetune --config`` format) and a grid of
  settings tried on held-out val data (build 0, seed 0; never a test split). Every compared arm gets the same
  number of settings; the suite refuses to select otherwise. Reference arms (a bound, not a contender: e.g.
  training on unbiased data) run at their file's setting.
- The chosen setting: the highest val-balanced accuracy among the settings whose in-distribution val accuracy is at
  least the suite's floor (its ``floor`` arm's val accuracy minus a tolerance): losing more in-distribution
  accuracy than that is damage, not debiasing. ``--select`` writes the choice to results/SUITE/selection.json and
  the resolved config of each arm to configs/SUITE/chosen/ARM.yaml (reproducible alone with ``mbias finetune``).
- Run i trains the suite's base build i with training seed i. Each arm's row gives its mean over builds; every
  other arm's difference with the baseline is paired by build and example, its interval over builds is
  ``mbias.stats.across_builds`` (the wider of t and bootstrap-t; coverage measured in results/coverage.md), with
  "k of n builds" (builds where it is positive) and the exact sign test beside it.

Finished runs are reused (WORK/SUITE/, keyed by everything that shapes them: the resolved config, the base
build's identity, the data, what is evaluated); an interrupted suite continues where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import evals  # noqa: E402

HERE = Path(__file__).parent
RESULTS, CONFIGS = HERE / "results", HERE / "configs"
# finished runs, kept between sessions (a suite on ten builds is hours of CPU): MBIAS_BENCH_WORK to move them
WORK = Path(os.environ.get("MBIAS_BENCH_WORK", Path.home() / ".cache" / "mbias" / "bench"))
VERSION = 1  # bump when training or evaluation changes in a way the cache keys do not see


@dataclass(frozen=True)
class Arm:
    name: str
    config: str  # configs/CONFIG.yaml
    grid: tuple = ({},)  # settings tried on val: each overrides the file (a recipe_config given replaces it)
    overrides: dict = field(default_factory=dict)  # fixed changes, not selected (e.g. other training data)
    contender: bool = True  # compared (its grid counts toward the equal budget) or a reference bound


@dataclass(frozen=True)
class Served:
    """A model served through a decode-time fix (``mbias.decoding``), trained by nothing or by an arm: the base
    build (``source`` None) or ``source``'s trained model at its chosen setting. ``grid``: decode specs tried on val
    (build 0), chosen by the suite's rule; or ``same_as`` another served row (its chosen spec, not tuned again)."""
    name: str
    grid: tuple = ()
    source: str | None = None
    same_as: str | None = None


@dataclass(frozen=True)
class Suite:
    name: str  # results/NAME/, configs/NAME/ by convention
    title: str
    setup: str  # how the arms train and what is measured, for the results files
    arms: tuple
    baseline: str  # the arm every other is paired with
    base: Callable[[int], str]  # run i -> the model it trains
    evaluate: Callable  # (scorer, args) -> per-example results (benchmarks/evals.py)
    columns: dict  # metric -> column label of the headline table
    floor: tuple = ("", 0.02)  # (arm, tolerance); "" = the baseline at its first setting
    untrained: dict = field(default_factory=dict)  # row label -> (run i -> model evaluated as it is)
    pairs: tuple = ()  # (a, b): b - a paired by build and example, a table of its own
    per_type: tuple = ("test-cp",)  # splits broken down by question type
    notes: Callable | None = None  # (table) -> extra Markdown lines
    served: tuple = ()  # Served rows: decode-time fixes measured like the arms


def parse_seeds(text: str) -> list[int]:
    """'0-9' or '0,1,2' (or both: '0-4,7')."""
    seeds = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return seeds


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def has_remote_code(model: str) -> bool:
    """Whether a model folder brings its own modelling code (config.json's auto_map): load with trust_remote_code."""
    config = Path(model) / "config.json"
    return config.exists() and "auto_map" in json.loads(config.read_text())


def resolve(suite: Suite, arm: Arm, seed: int, setting: dict):
    """(FinetuneConfig, model, data) of ``arm`` for run ``seed`` at ``setting``."""
    from mbias.config import build_config, load_yaml
    from mbias.finetune.config import FinetuneConfig

    path = CONFIGS / f"{arm.config}.yaml"
    values = {**load_yaml(path), **setting, **arm.overrides, "seed": seed}
    values.pop("model", None)
    data = values.pop("data")
    return build_config(FinetuneConfig, values, where=str(path)), suite.base(seed), data


def load_scorer(model_dir: str):
    """A trained arm (a model folder, or a LoRA adapter over the base its recipe.json names) or a base model."""
    from mbias.models import load_model

    if (Path(model_dir) / "adapter_config.json").exists():
        base = json.loads((Path(model_dir) / "recipe.json").read_text())["model"]
        return load_model(base, device="cpu", adapter=model_dir, trust_remote_code=has_remote_code(base))
    return load_model(model_dir, device="cpu", trust_remote_code=has_remote_code(model_dir))


def _eval_key(evaluator, args, decode: str | None = None) -> dict:
    return {"evaluator": evaluator.__name__, "version": VERSION, **({"decode": decode} if decode else {}),
            **{k: getattr(args, k) for k in ("n_eval", "n_audit", "n_probe", "n_val")}}


def train(suite: Suite, arm: Arm, seed: int, setting: dict) -> tuple[Path, float]:
    """Train ``arm`` at ``setting`` for run ``seed`` unless an identical run is cached: (folder, seconds per step)."""
    from mbias.finetune.run import run_finetune
    from mbias.models import LoadOptions
    from mbias.zoo import model_identity

    config, model, data = resolve(suite, arm, seed, setting)
    settings = config.mbias_dict()
    settings.pop("output_dir", None)
    key = json.loads(json.dumps({"config": settings, "model": model_identity(model), "data": data,
                                 "version": VERSION}, default=str))
    out = WORK / suite.name / f"{_slug(arm.name)}-s{seed}-{_digest(key)}"
    done = out / "benchmark-train.json"
    if done.exists() and json.loads(done.read_text())["key"] == key:
        return out, json.loads(done.read_text())["seconds_per_step"]
    t0 = time.perf_counter()
    run_finetune(model, data, out, config=config, progress=False,
                 load=LoadOptions(trust_remote_code=has_remote_code(model)))
    sps = json.loads((out / "recipe.json").read_text()).get("seconds_per_step",
                                                            (time.perf_counter() - t0) / config.max_steps)
    done.write_text(json.dumps({"key": key, "seconds_per_step": sps}))
    return out, sps


def evaluate(model_dir: Path | str, evaluator, args, cache: Path, decode: str | None = None) -> dict:
    """``evaluator`` on the model at ``model_dir`` (served through ``decode`` when given), cached in the file
    ``cache`` under the evaluation's key."""
    from mbias.decoded_scoring import with_decode

    key = _eval_key(evaluator, args, decode)
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            return saved["result"]
    result = evaluator(with_decode(load_scorer(str(model_dir)), decode), args)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "result": result}))
    return result


def run_arm(suite: Suite, arm: Arm, seed: int, setting: dict, evaluator, args) -> tuple[dict, float]:
    out, sps = train(suite, arm, seed, setting)
    return evaluate(out, evaluator, args, out / f"benchmark-eval-{evaluator.__name__}.json"), sps


def run_untrained(suite: Suite, model_of: Callable[[int], str], seed: int, args) -> dict:
    from mbias.zoo import model_identity

    model = model_of(seed)
    cache = WORK / suite.name / f"untrained-{_digest(model_identity(model))}" / "benchmark-eval.json"
    return evaluate(model, suite.evaluate, args, cache)


def run_served(suite: Suite, served: Served, seed: int, spec: str, source_setting: dict | None, evaluator,
               args) -> dict:
    """``served``'s model for run ``seed`` (the base build, or its source arm trained at ``source_setting``) through
    the decode ``spec``."""
    if served.source is None:
        from mbias.zoo import model_identity

        model = suite.base(seed)
        cache = WORK / suite.name / f"untrained-{_digest(model_identity(model))}"
    else:
        arm = next(a for a in suite.arms if a.name == served.source)
        model, _ = train(suite, arm, seed, source_setting)
        cache = Path(model)
    name = f"benchmark-eval-{evaluator.__name__}-{_slug(spec)}.json"
    return evaluate(model, evaluator, args, cache / name, decode=spec)


def served_spec(suite: Suite, served: Served, chosen: dict) -> str:
    return chosen[served.same_as if served.same_as else served.name]


# -- summaries ---------------------------------------------------------------------------------------------------

def _mean(v) -> float:
    v = np.asarray(v, dtype=float)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else float("nan")


def summarise(results: dict, metrics: list[str], baseline: str) -> dict:
    """Per row and metric: mean over builds with its interval over builds; per non-baseline row the difference
    with the baseline, paired by build and example (``mbias.stats.across_builds``)."""
    from mbias.stats import across_builds

    rows = {}
    for label, runs in results.items():
        row = {}
        for m in metrics:
            per = {s: evals.values(r, m) for s, r in runs.items()}
            stat = across_builds([_mean(v) for _, v in sorted(per.items())])
            row[m] = {"mean": stat["mean"], "ci95": stat["ci95"], "per_run": stat["per_build"],
                      "seeds": sorted(per)}
            if label != baseline and baseline in results:
                diffs = []
                for s, v in sorted(per.items()):
                    if s in results[baseline]:
                        diffs.append(_mean(v - evals.values(results[baseline][s], m)))
                row[f"{m} vs {baseline}"] = across_builds(diffs)
        rows[label] = row
    return rows


def fmt(stat, signed: bool = False) -> str:
    if stat is None or stat.get("mean") is None or np.isnan(stat["mean"]):
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    lo, hi = stat["ci95"]
    if lo is None:
        return f.format(stat["mean"])
    return f"{f.format(stat['mean'])} [{f.format(lo)}, {f.format(hi)}]"


def fmt_diff(stat) -> str:
    """A paired difference: mean [interval], k of n builds above 0."""
    if stat is None or stat.get("mean") is None:
        return "-"
    return f"{fmt(stat, True)}, {stat['k_positive']}/{stat['n_builds']}"


# -- selection ---------------------------------------------------------------------------------------------------

def _setting_label(arm: Arm, setting: dict) -> str:
    return arm.name + ("" if not setting else " " + json.dumps(setting, sort_keys=True))


def select(suite: Suite, args) -> None:
    from mbias.provenance import results_header

    t0 = time.perf_counter()
    contenders = [a for a in suite.arms if a.contender]
    budget = {a.name: len(a.grid) for a in contenders}
    if len(set(budget.values())) != 1:
        raise SystemExit(f"{suite.name}: every compared arm needs the same number of settings on val; got {budget}")
    floor_arm = suite.floor[0] or suite.baseline
    results, settings, timing = {}, {}, {}
    for arm in suite.arms:
        if not arm.contender and arm.name != floor_arm:
            continue
        for setting in arm.grid:
            label = _setting_label(arm, setting)
            res, sps = run_arm(suite, arm, 0, setting, evals.val, args)
            results[label], settings[label], timing[label] = {0: res}, (arm, setting), sps
            print(json.dumps({"run": label, **{k: round(_mean(v["correct"]), 3) for k, v in res.items()},
                              "s/step": round(sps, 4)}), flush=True)
    baseline_first = _setting_label(next(a for a in suite.arms if a.name == suite.baseline),
                                    next(a for a in suite.arms if a.name == suite.baseline).grid[0])
    table = summarise(results, list(evals.VAL), baseline_first)
    floor_label = _setting_label(next(a for a in suite.arms if a.name == floor_arm),
                                 next(a for a in suite.arms if a.name == floor_arm).grid[0])
    floor = table[floor_label]["val"]["mean"] - suite.floor[1]
    chosen = {}
    for label, (arm, setting) in settings.items():
        if not arm.contender:
            continue
        ok = table[label]["val"]["mean"] >= floor
        score = table[label]["val-balanced"]["mean"]
        best = chosen.get(arm.name)
        if ok and (best is None or best["met_floor"] is False or score > best["val-balanced"]):
            chosen[arm.name] = {"setting": setting, "val-balanced": score, "met_floor": True}
        elif best is None:  # nothing met the floor so far: keep the first setting, flagged
            chosen[arm.name] = {"setting": arm.grid[0], "val-balanced": None, "met_floor": False}
    for arm in suite.arms:
        chosen.setdefault(arm.name, {"setting": arm.grid[0], "val-balanced": None, "met_floor": None})
        write_chosen_config(suite, arm, chosen[arm.name]["setting"])
    for served in suite.served:  # decode-time fixes: their specs on val, the same rule
        if not served.grid:
            continue
        source = None if served.source is None else chosen[served.source]["setting"]
        scores = {}
        for spec in served.grid:
            label = f"{served.name} {spec}"
            res = run_served(suite, served, 0, spec, source, evals.val, args)
            results[label], timing[label] = {0: res}, float("nan")
            scores[spec] = (_mean(res["val"]["correct"]) >= floor, _mean(res["val-balanced"]["correct"]))
            print(json.dumps({"run": label, **{k: round(_mean(v["correct"]), 3) for k, v in res.items()}}), flush=True)
        ok = [spec for spec in served.grid if scores[spec][0]]
        best = max(ok, key=lambda spec: scores[spec][1]) if ok else served.grid[0]
        chosen[served.name] = {"setting": best, "val-balanced": scores[best][1], "met_floor": bool(ok)}
    header, provenance = results_header(wall_seconds=time.perf_counter() - t0)
    out = RESULTS / suite.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(
        {"provenance": provenance, "suite": suite.name, "floor": floor, "floor_arm": floor_label,
         "chosen": chosen, "rows": table, "seconds_per_step": timing, "n_val": args.n_val}, indent=2, default=str))
    lines = [*header, "", f"# {suite.title}: settings chosen on val", "",
             f"{suite.base(0)} at run 0 (training seed 0). {suite.setup} One run per setting; val-balanced = "
             f"{evals.VAL['val-balanced']} (the cue predicts nothing), val = {evals.VAL['val']} (in-distribution), "
             f"{args.n_val} examples each, 95% bootstrap over examples. No test split is read. Every compared arm "
             f"had {next(iter(budget.values()))} settings.", "",
             "| setting | val-balanced | val (in-distribution) | s/step |", "|---|---|---|---|"]
    from mbias.stats import bootstrap_mean

    for label in results:
        cells = [bootstrap_mean(results[label][0][k]["correct"]) for k in ("val-balanced", "val")]
        sps = "-" if np.isnan(timing[label]) else f"{timing[label]:.4f}"
        lines.append(f"| {label} | {fmt(cells[0])} | {fmt(cells[1])} | {sps} |")
    lines += ["", f"Chosen per arm: the highest val-balanced accuracy among settings whose val accuracy is at least "
              f"{floor:.3f} ({floor_label}'s {table[floor_label]['val']['mean']:.3f} minus {suite.floor[1]:.2f}): "
              + "; ".join(f"{name}: `{json.dumps(c['setting'], sort_keys=True)}`"
                          + ("" if c["met_floor"] is not False else " (no setting met the floor; the first kept)")
                          for name, c in chosen.items() if c["met_floor"] is not None) + ".",
              f"Resolved configs: benchmarks/configs/{suite.name}/chosen/ (`mbias finetune --config FILE --out DIR` "
              "reproduces a run of build 0)."]
    (out / "selection.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_chosen_config(suite: Suite, arm: Arm, setting: dict) -> None:
    import yaml

    from mbias.config import load_yaml

    body = {**load_yaml(CONFIGS / f"{arm.config}.yaml"), **setting, **arm.overrides}
    body["model"] = suite.base(0)
    path = CONFIGS / suite.name / "chosen" / f"{_slug(arm.name)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {suite.title}: arm {arm.name} at the setting chosen on val "
                    f"(`python benchmarks/harness.py {suite.name} --select`; results/{suite.name}/selection.md).\n"
                    f"# Run i of the comparison: model {suite.base(0)} -> its build i, seed i.\n"
                    + yaml.safe_dump(body, sort_keys=False))


def chosen_settings(suite: Suite) -> dict:
    path = RESULTS / suite.name / "selection.json"
    if not path.exists():
        if any(len(a.grid) > 1 for a in suite.arms):
            raise SystemExit(f"no {path}: run `python benchmarks/harness.py {suite.name} --select` first")
        return {a.name: a.grid[0] for a in suite.arms}
    chosen = json.loads(path.read_text())["chosen"]
    out = {a.name: chosen[a.name]["setting"] if a.name in chosen else a.grid[0] for a in suite.arms}
    for served in suite.served:
        if served.grid and served.name not in chosen:
            raise SystemExit(f"{path} has no decode chosen for {served.name}: rerun --select")
        if served.grid:
            out[served.name] = chosen[served.name]["setting"]
    return out


# -- comparison --------------------------------------------------------------------------------------------------

def compare(suite: Suite, args) -> None:
    from mbias.provenance import results_header

    t0 = time.perf_counter()
    seeds = parse_seeds(args.seeds)
    arms = [a for a in suite.arms if not args.arms or a.name in args.arms.split(",") or a.name == suite.baseline]
    chosen = chosen_settings(suite)
    results, timing = {}, {}
    for label, model_of in suite.untrained.items():
        results[label] = {s: run_untrained(suite, model_of, s, args) for s in seeds}
    for arm in arms:
        results[arm.name], per = {}, []
        for s in seeds:
            t = time.perf_counter()
            results[arm.name][s], sps = run_arm(suite, arm, s, chosen[arm.name], suite.evaluate, args)
            per.append(sps)
            print(json.dumps({"arm": arm.name, "seed": s, "base": suite.base(s),
                              **{m: round(_mean(evals.values(results[arm.name][s], m)), 3) for m in suite.columns},
                              "seconds": round(time.perf_counter() - t, 1)}), flush=True)
        timing[arm.name] = float(np.mean(per))
    names = {a.name for a in arms}
    for served in [s for s in suite.served if s.source is None or s.source in names]:
        spec = served_spec(suite, served, chosen)
        source = None if served.source is None else chosen[served.source]
        results[served.name] = {s: run_served(suite, served, s, spec, source, suite.evaluate, args) for s in seeds}
        print(json.dumps({"served": served.name, "decode": spec}), flush=True)
    cost = decode_cost(suite, chosen, seeds[0], args) if any(s.name in results for s in suite.served) else {}
    categories = sorted(set(results[suite.baseline][seeds[0]]["test-cp"]["category"]))
    by_type = [f"{split}/{c}" for split in suite.per_type for c in categories]
    metrics = list(suite.columns) + by_type
    table = summarise(results, metrics, suite.baseline)
    pairs = {}
    for a, b in suite.pairs:
        if a in results and b in results:
            pairs[f"{b} - {a}"] = summarise({a: results[a], b: results[b]}, list(suite.columns), a)[b]
    header, provenance = results_header(wall_seconds=time.perf_counter() - t0)
    out = RESULTS / suite.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(
        {"provenance": provenance, "suite": suite.name, "bases": [suite.base(s) for s in seeds], "seeds": seeds,
         "settings": {a.name: chosen[a.name] for a in arms}, "rows": table, "pairs": pairs,
         "seconds_per_step": timing, "decode_cost": cost,
         "n": {k: getattr(args, k) for k in ("n_eval", "n_audit", "n_probe")}},
        indent=2, default=str))
    text = markdown(suite, args, header, seeds, arms, chosen, table, pairs, timing, categories, cost)
    (out / "compare.md").write_text(text)
    print(text)


def decode_cost(suite: Suite, chosen: dict, seed: int, args, n: int = 100) -> dict:
    """Seconds per test-cp example of answering (choice scoring), plain and through each served row's decode, on
    build ``seed``'s base model, measured side by side (interleaved in rounds, each one's fastest round)."""
    from mbias.decoded_scoring import with_decode

    scorer = load_scorer(suite.base(seed))
    examples = [scorer.prepare(ex) for ex in evals._split("test-cp", n)]
    specs = {"plain": None, **{s.name: served_spec(suite, s, chosen) for s in suite.served if s.source is None}}
    best = dict.fromkeys(specs, float("inf"))
    for _ in range(3):
        for name, spec in specs.items():
            served = with_decode(scorer, spec)
            t = time.perf_counter()
            for p in examples:
                served.predict(p)
            best[name] = min(best[name], (time.perf_counter() - t) / len(examples))
    return {name: {"seconds_per_example": sec, "vs_plain": sec / best["plain"], "decode": specs[name]}
            for name, sec in best.items()}


def markdown(suite, args, header, seeds, arms, chosen, table, pairs, timing, categories, cost=None) -> str:
    base_sps = timing.get(suite.baseline)
    n = len(seeds)
    lines = [*header, "", f"# {suite.title}", "",
             f"Bases {suite.base(seeds[0])} ... {suite.base(seeds[-1])} ({n} builds; run i trains build i with "
             f"training seed i). {suite.setup} Settings chosen on val (results/{suite.name}/selection.md): "
             + "; ".join(f"{a.name} `{json.dumps(chosen[a.name], sort_keys=True)}`" for a in arms) + ".",
             "",
             f"Mean over the {n} builds [95% interval over builds]. Below the {suite.baseline} row each cell is the "
             f"arm's mean, then its difference with {suite.baseline} paired by build and example [95% interval over "
             "builds: the wider of t and bootstrap-t, docs/methods.md], then k/n = builds on which the difference "
             "is positive.", "",
             "| arm | " + " | ".join(suite.columns.values()) + f" | s/step (x {suite.baseline}) |",
             "|---" * (len(suite.columns) + 2) + "|"]
    for label, r in table.items():
        if f"{next(iter(suite.columns))} vs {suite.baseline}" in r:
            cells = [f"{r[m]['mean']:.3f} ({fmt_diff(r[f'{m} vs {suite.baseline}'])})" for m in suite.columns]
        else:
            cells = [fmt(r[m]) for m in suite.columns]
        sps = timing.get(label)
        step = "-" if sps is None else f"{sps:.4f} ({sps / base_sps:.2f}x)" if base_sps else f"{sps:.4f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {step} |")
    if any(s.name in table for s in suite.served):
        lines += ["", "Decode-time rows (no training): " + "; ".join(
            f"{s.name} = " + ("the base build" if s.source is None else f"the {s.source} arm's model") +
            f" served with `{served_spec(suite, s, chosen)}`" +
            (" (chosen on val)" if s.grid else f" (the spec chosen for {s.same_as})") for s in suite.served
            if s.name in table) + "."]
        if cost:
            lines += ["", "Cost of answering one test-cp example on build " + str(seeds[0]) + " (choice scoring, "
                      "side by side, fastest of 3 rounds): " + ", ".join(
                          f"{k} {v['seconds_per_example'] * 1000:.1f} ms ({v['vs_plain']:.2f}x)"
                          for k, v in cost.items()) + ". A contrastive fix runs a second, image-free (or noised-"
                      "image) branch: one extra forward token per generated token plus that branch's prompt."]
    if suite.notes:
        lines += ["", *suite.notes(table, suite)]
    if pairs:
        lines += ["", "Paired by build and example (b - a):", "",
                  "| pair | " + " | ".join(suite.columns.values()) + " |", "|---" * (len(suite.columns) + 1) + "|"]
        for name, row in pairs.items():
            a = name.split(" - ")[1]
            lines.append(f"| {name} | " + " | ".join(fmt_diff(row.get(f"{m} vs {a}")) for m in suite.columns) + " |")
    for split in suite.per_type:
        lines += ["", f"Per question type, {split} accuracy, mean over builds (difference with {suite.baseline}, "
                  "k/n):", "", "| arm | " + " | ".join(categories) + " |", "|---" * (len(categories) + 1) + "|"]
        for label, r in table.items():
            cells = []
            for c in categories:
                m = f"{split}/{c}"
                d = r.get(f"{m} vs {suite.baseline}")
                cells.append(f"{r[m]['mean']:.2f}" + ("" if d is None or d["mean"] is None else
                                                       f" ({d['mean']:+.2f}, {d['k_positive']}/{d['n_builds']})"))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    first = next(iter(suite.columns))
    lines += ["", f"Per build ({', '.join(map(str, seeds))}), {suite.columns[first]}:", ""]
    lines += [f"- {label}: " + ", ".join(f"{v:.3f}" for v in r[first]["per_run"]) for label, r in table.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from suites import SUITES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", nargs="?", choices=sorted(SUITES))
    ap.add_argument("--list", action="store_true", help="the suites and their arms")
    ap.add_argument("--select", action="store_true", help="try each arm's settings on val data (build 0)")
    ap.add_argument("--seeds", default="0-9", help="builds / training seeds, e.g. 0-9 or 0,1,2")
    ap.add_argument("--arms", help="comma-separated arm names (default: all; the baseline always runs)")
    ap.add_argument("--n-eval", type=int, default=500, help="examples per test split")
    ap.add_argument("--n-audit", type=int, default=200, help="examples the audit's probes read")
    ap.add_argument("--n-probe", type=int, default=3000, help="images the vision probe is fitted on")
    ap.add_argument("--n-val", type=int, default=400, help="examples per val set (--select)")
    args = ap.parse_args(argv)
    if args.list or not args.suite:
        for name, s in SUITES.items():
            print(f"{name}: {s.title}\n  arms: " + ", ".join(
                f"{a.name} ({len(a.grid)} settings{'' if a.contender else ', reference'})" for a in s.arms))
        return
    suite = SUITES[args.suite]
    select(suite, args) if args.select else compare(suite, args)


if __name__ == "__main__":
    main()

