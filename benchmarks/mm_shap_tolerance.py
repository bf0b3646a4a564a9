"""mm_shap's error against its cost, and the tolerance that sets its default budget.

``mm_shap`` (mbias's game) estimates Shapley values by antithetic permutation pairs; the pairs are independent, so
their spread gives each sample's standard error of T-SHAP (jackknife over pairs), and ``tolerance`` stops drawing
pairs once it is reached (``n_permutations`` the cap). This script measures, per sample, T-SHAP's actual error
against a long independent reference run (another seed, ``--reference-permutations`` permutations; its own
standard error is subtracted in quadrature) and what it cost (distinct coalitions scored, LLM tokens = coalitions
x sequence length):

- at fixed budgets (the default before this: 20 permutations);
- at each tolerance, with the default cap (20) and without a cap in practice (the reference's budget).

Settings: the zoo's ladder builds on synth:shapes-p90/test-balanced (trained models; the verdict's ladder lives
here; 16 image tokens) and, with random weights, the LLaVA-1.5 shape (576 image tokens, POPE-style questions of
18-47 question tokens: 30-70 players; ``benchmarks/real_shapes.py``).

The default tolerance is chosen by a rule declared here, before the run: the largest tolerance in the grid at which,
on every zoo build, the estimator's actual error (root mean square over samples) adds at most 5% to the width of
the 95% interval on the mean T-SHAP, i.e. err^2 <= (1.05^2 - 1) x the variance of T-SHAP over samples, with the
default cap. ``benchmarks/mm_shap_tolerance.py --ladder`` then audits the ladder (probes mm_shap + conflict, so
that T-SHAP is the verdict's share evidence) at the old default (20 permutations) and at the new one, and
compares the verdicts.

    python benchmarks/mm_shap_tolerance.py [--zoo-samples 8] [--real-samples 3]
    python benchmarks/mm_shap_tolerance.py --ladder [--n 200] [--tolerance T] [--splits test-balanced,test-cp]

Writes benchmarks/results/mm_shap_tolerance/{curve,ladder}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

OUT = Path(__file__).parent / "results" / "mm_shap_tolerance"
ZOO_BUILDS = ("shapes-p00", "shapes-p90-seed7", "shapes-p90", "shapes-p90-seed1", "shapes-p99")
WIDENING = 0.05  # the rule: estimator noise may widen the interval on the mean T-SHAP by at most this much


class CachedValue:
    """A value function that remembers the coalitions it has scored (so every budget and tolerance replays the
    same draws without scoring them again); each estimator call still counts its own distinct coalitions."""

    def __init__(self, fn):
        self.fn, self.cache = fn, {}

    def __call__(self, masks):
        import torch

        rows = masks.numpy()
        keys = [np.packbits(r).tobytes() for r in rows]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            out = self.fn(masks[todo]).detach().float().cpu().numpy()
            self.cache.update(zip((keys[i] for i in todo), out.tolist(), strict=True))
        return torch.tensor([self.cache[k] for k in keys])


def sample_runs(scorer, example, seed: int, budgets, tolerances, cap: int, ref_perms: int, min_perms: int) -> dict:
    """Every budget and tolerance on one example, against the reference run."""
    from mbias.captum_input import ImageTextInput
    from mbias.probes.mm_shap import MMShapProbe, t_shap
    from mbias.shapley import permutation_shapley

    prepared = scorer.prepare(example)
    probe = MMShapProbe()
    grid = probe.grid_for(prepared)
    value = "choice" if example.choices and example.answer in example.choices else "logprob"
    inp = ImageTextInput(scorer, prepared, grid, value=value)
    n, n_text = inp.n_itp_features, inp.n_text
    fn = CachedValue(inp.value)

    def stat(phi):
        return t_shap(phi, n_text)[0]

    ref = permutation_shapley(fn, n, ref_perms, rng=np.random.default_rng(10_000 + seed), statistic=stat)
    out = {"id": example.id, "players": n, "n_text": n_text, "seq_len": int(prepared.prompt_ids.numel()) + 1,
           "t_ref": stat(ref.phi), "se_ref": ref.stderr, "runs": []}

    def record(kind, x, res):
        out["runs"].append({"kind": kind, "x": x, "t": stat(res.phi), "se": res.stderr, "cost": res.n_evaluations,
                            "perms": res.n_permutations, "stopped_by": res.stopped_by})

    for b in budgets:
        record("budget", b, permutation_shapley(fn, n, b, rng=np.random.default_rng(seed), statistic=stat))
    for tol in tolerances:
        for kind, c in (("tolerance", cap), ("tolerance-uncapped", ref_perms)):
            record(kind, tol, permutation_shapley(fn, n, c, rng=np.random.default_rng(seed), statistic=stat,
                                                  tolerance=tol, min_permutations=min_perms))
    return out


def aggregate(samples: list[dict]) -> list[dict]:
    """Per (kind, x): root-mean-square actual error (reference noise removed), root-mean-square reported
    standard error, coverage of |error| <= 2 x combined standard error, mean cost."""
    ok = [s for s in samples if s["t_ref"] is not None]
    keys = sorted({(r["kind"], r["x"]) for s in ok for r in s["runs"]}, key=lambda k: (k[0], -k[1] if
                                                                                        k[0] != "budget" else k[1]))
    rows = []
    for kind, x in keys:
        pts = [(s, r) for s in ok for r in s["runs"] if (r["kind"], r["x"]) == (kind, x) and r["t"] is not None]
        d2 = np.array([(r["t"] - s["t_ref"]) ** 2 for s, r in pts])
        ref2 = np.array([(s["se_ref"] or 0.0) ** 2 for s, _ in pts])
        se = np.array([r["se"] if r["se"] is not None else np.nan for _, r in pts])
        cover = [abs(r["t"] - s["t_ref"]) <= 2 * np.sqrt((r["se"] or 0) ** 2 + (s["se_ref"] or 0) ** 2)
                 for s, r in pts]
        rows.append({"kind": kind, "x": x, "n": len(pts),
                     "rms_error": float(np.sqrt(max(0.0, d2.mean() - ref2.mean()))),
                     "rms_stderr": float(np.sqrt(np.nanmean(se ** 2))), "coverage_2se": float(np.mean(cover)),
                     "coalitions": float(np.mean([r["cost"] for _, r in pts])),
                     "llm_tokens": float(np.mean([r["cost"] * s["seq_len"] for s, r in pts])),
                     "permutations": float(np.mean([r["perms"] for _, r in pts])),
                     "stopped_by_cap": int(sum(r["stopped_by"] == "cap" for _, r in pts))})
    return rows


def curve(args) -> None:
    from mbias.models import ScoringConfig, load_model, wrap_model
    from mbias.provenance import results_header
    from mbias.synth import load_synth

    started = time.perf_counter()
    budgets = [int(x) for x in args.budgets.split(",")]
    tolerances = [float(x) for x in args.tolerances.split(",")]
    settings = {}
    ds = load_synth("shapes-p90/test-balanced")
    for build in args.zoo_builds.split(","):
        scorer = load_model(f"zoo:{build}", device="cpu")
        samples = [sample_runs(scorer, ds[i], i, budgets, tolerances, args.cap, args.reference_permutations,
                               args.min_permutations) for i in range(args.zoo_samples)]
        settings[f"zoo:{build}"] = samples
        print(json.dumps({"setting": build, "t_ref": [s["t_ref"] for s in samples]}), flush=True)
    if args.real_samples:
        import real_shapes

        model, proc = real_shapes.build("llava-1.5")
        scorer = wrap_model(model, proc, config=ScoringConfig(batch_size=128))
        samples = [sample_runs(scorer, ex, i, budgets, tolerances, args.cap, args.real_reference_permutations,
                               args.min_permutations) for i, ex in enumerate(real_shapes.examples(args.real_samples))]
        settings["llava-1.5 shape (random weights)"] = samples
        print(json.dumps({"setting": "llava-1.5", "t_ref": [s["t_ref"] for s in samples]}), flush=True)

    result = {"budgets": budgets, "tolerances": tolerances, "cap": args.cap, "min_permutations": args.min_permutations,
              "reference_permutations": args.reference_permutations,
              "real_reference_permutations": args.real_reference_permutations, "rule_widening": WIDENING,
              "settings": {}}
    for name, samples in settings.items():
        t = np.array([s["t_ref"] for s in samples if s["t_ref"] is not None])
        result["settings"][name] = {"samples": samples, "rows": aggregate(samples),
                                    "t_shap_sd_over_samples": float(t.std(ddof=1)) if len(t) > 1 else None,
                                    "mean_players": float(np.mean([s["players"] for s in samples])),
                                    "mean_seq_len": float(np.mean([s["seq_len"] for s in samples]))}
    result["choice"] = choose(result)
    header, result["provenance"] = results_header(wall_seconds=time.perf_counter() - started)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "curve.json").write_text(json.dumps(result, indent=2))
    lines = ["# mm_shap: error against cost, and the default tolerance", "", *header, "",
             f"T-SHAP's actual error per sample against an independent reference run ({args.reference_permutations} "
             f"permutations on the zoo, {args.real_reference_permutations} at the LLaVA-1.5 shape; its standard "
             "error removed in quadrature), root mean square over samples; the reported standard error (jackknife "
             "over antithetic pairs) beside it, and how often |error| <= 2 combined standard errors. Cost: distinct "
             "coalitions scored per sample, and LLM tokens (coalitions x prompt length + 1). 'tolerance' rows stop "
             f"at the cap of {args.cap} permutations (the default n_permutations), 'tolerance-uncapped' at the "
             f"reference's budget; at least {args.min_permutations} permutations before the first check.", ""]
    for name, st in result["settings"].items():
        sd = st["t_shap_sd_over_samples"]
        lines += [f"## {name}: {len(st['samples'])} samples, {st['mean_players']:.1f} players, "
                  f"{st['mean_seq_len']:.0f} tokens per coalition; T-SHAP's SD over samples {sd:.3f}", "",
                  "| budget | rms error | rms reported SE | coverage (2 SE) | permutations | coalitions | LLM tokens "
                  "| stopped at cap | interval widening |", "|---|---|---|---|---|---|---|---|---|"]
        for r in st["rows"]:
            label = {"budget": f"{r['x']} permutations", "tolerance": f"tolerance {r['x']:g} (cap {args.cap})",
                     "tolerance-uncapped": f"tolerance {r['x']:g} (no cap)"}[r["kind"]]
            widen = np.sqrt(1 + r["rms_error"] ** 2 / sd ** 2) - 1 if sd else float("nan")
            lines.append(f"| {label} | {r['rms_error']:.4f} | {r['rms_stderr']:.4f} | {r['coverage_2se']:.0%} | "
                         f"{r['permutations']:.1f} | {r['coalitions']:.0f} | {r['llm_tokens']:.0f} | "
                         f"{r['stopped_by_cap']}/{r['n']} | {widen:.1%} |")
        lines.append("")
    c = result["choice"]
    lines += ["## The default", "", c["text"]]
    (OUT / "curve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def choose(result: dict) -> dict:
    """The declared rule: the largest tolerance whose capped runs' squared error (pooled over every zoo sample, the
    reference's noise removed) stays within (1 + WIDENING)^2 - 1 of the smallest between-sample variance of
    T-SHAP among the zoo builds, i.e. widens no build's interval on the mean T-SHAP by more than WIDENING."""
    limit = (1 + WIDENING) ** 2 - 1
    zoo = {k: v for k, v in result["settings"].items() if k.startswith("zoo:")}
    var_min = min(st["t_shap_sd_over_samples"] ** 2 for st in zoo.values())
    ok = []
    for tol in sorted(result["tolerances"]):
        d2 = [(r["t"] - s["t_ref"]) ** 2 - (s["se_ref"] or 0.0) ** 2 for st in zoo.values() for s in st["samples"]
              if s["t_ref"] is not None for r in s["runs"]
              if r["kind"] == "tolerance" and r["x"] == tol and r["t"] is not None]
        ok.append((tol, max(0.0, float(np.mean(d2))) / var_min))
    passing = [tol for tol, ratio in ok if ratio <= limit]
    tol = max(passing) if passing else None

    def cost(kind, x):
        return {name: next(r for r in st["rows"] if r["kind"] == kind and r["x"] == x)
                for name, st in result["settings"].items()}

    saving = {}
    if tol is not None and 20 in result["budgets"]:
        new, old = cost("tolerance", tol), cost("budget", 20)
        saving = {name: {"coalitions_new": new[name]["coalitions"], "coalitions_old": old[name]["coalitions"],
                         "ratio": new[name]["coalitions"] / old[name]["coalitions"],
                         "rms_error_new": new[name]["rms_error"], "rms_error_old": old[name]["rms_error"]}
                  for name in new}
    text = (f"Rule (declared before the run): the largest tolerance at which the estimator's error adds at most "
            f"{WIDENING:.0%} to the width of the interval on the mean T-SHAP of any zoo build (mean squared error "
            f"over all zoo samples <= {limit:.4f} x the smallest variance of T-SHAP over one build's samples, "
            f"{var_min:.4f}), with the cap of {result['cap']} permutations. Ratio err^2/var per tolerance: "
            + ", ".join(f"{t:g}: {w:.4f}" for t, w in ok) + ". "
            + (f"Chosen: **{tol:g}**." if tol is not None else "No tolerance in the grid passes."))
    if saving:
        text += " Against the fixed 20 permutations: " + "; ".join(
            f"{name} {s['coalitions_new']:.0f} vs {s['coalitions_old']:.0f} coalitions ({s['ratio']:.2f}x), "
            f"rms error {s['rms_error_new']:.4f} vs {s['rms_error_old']:.4f}" for name, s in saving.items()) + "."
    return {"tolerance": tol, "ratio": {str(t): w for t, w in ok}, "limit": limit, "var_min": var_min, "vs_20_permutations": saving, "text": text}


def ladder(args) -> None:
    """The ladder's audits with T-SHAP as the verdict's share evidence, at the old default and the new."""
    import importlib.util

    from mbias.diagnose.config import AuditConfig
    from mbias.diagnose.runner import run_audit
    from mbias.provenance import results_header
    from mbias.reports.content import verdict_label
    from mbias.zoo.pinned import pinned_builds, pinned_record

    spec = importlib.util.spec_from_file_location("zoo_ladder", Path(__file__).parent / "zoo_ladder.py")
    zl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zl)
    started = time.perf_counter()
    builds = pinned_builds()
    models = {}
    for build in sorted(set(builds.values()),
                        key=lambda b: pinned_record(b)["behaviour"]["test-cp"]["cue_following"]["mean"]):
        names = [n for n, b in builds.items() if b == build and n != b]
        models[names[0] if names else build] = f"zoo:{names[0] if names else build}"
    for label, (kind, _) in zl.BROKEN.items():
        models[label] = zl.broken_model(kind)
    settings = {"old default (20 permutations)": {"tolerance": None},
                f"new default (tolerance {args.tolerance:g})": {"tolerance": args.tolerance}}
    probes = ["mm_shap", "conflict"]
    rows = []
    for label, ref in models.items():
        for split in args.splits.split(","):
            row = {"model": label, "split": split}
            for name, mm in settings.items():
                out = Path("/tmp/mbias-mm-shap-tolerance") / f"{label.replace(', ', '-').replace(' ', '_')}-{split}-" \
                    f"{mm['tolerance']}"
                t0 = time.perf_counter()
                s = run_audit(ref, f"synth:shapes-p90/{split}", out, config=AuditConfig(
                    max_samples=args.n, probes=probes, probe_config={"mm_shap": mm}), overwrite=True, progress=False,
                    report=False)
                v, ms = s["verdict"], s["probes"]["mm_shap"]
                row[name] = {"verdict": verdict_label(v), "dominant": v["dominant_modality"], "severity": v["severity"],
                             "evidence": v["evidence"], "t_shap": ms["t_shap"], "t_shap_stderr": ms.get("t_shap_stderr"),
                             "noise_share_of_variance": ms.get("noise_share_of_variance"),
                             "mean_evaluations": ms["mean_evaluations"], "mean_permutations": ms.get("mean_permutations"),
                             "seconds": time.perf_counter() - t0}
            a, b = (row[k] for k in settings)
            row["same_verdict"] = (a["verdict"], a["severity"]) == (b["verdict"], b["severity"])
            rows.append(row)
            print(json.dumps({"model": label, "split": split, "same": row["same_verdict"],
                              "verdicts": [row[k]["verdict"] for k in settings],
                              "t_shap": [round(row[k]["t_shap"]["mean"], 3) for k in settings]}), flush=True)
    header, meta = results_header(wall_seconds=time.perf_counter() - started)
    OUT.mkdir(parents=True, exist_ok=True)
    names = list(settings)
    summary = {"n_rows": len(rows), "n_same_verdict": sum(r["same_verdict"] for r in rows),
               "max_abs_t_shap_change": max(abs(r[names[0]]["t_shap"]["mean"] - r[names[1]]["t_shap"]["mean"])
                                            for r in rows),
               "coalitions_ratio": float(np.mean([r[names[1]]["mean_evaluations"] / r[names[0]]["mean_evaluations"]
                                                  for r in rows])),
               "seconds_ratio": float(sum(r[names[1]]["seconds"] for r in rows)
                                      / sum(r[names[0]]["seconds"] for r in rows))}
    (OUT / "ladder.json").write_text(json.dumps({"provenance": meta, "n": args.n, "probes": probes,
                                                 "settings": settings, "rows": rows, "summary": summary}, indent=2))

    def stat(st):
        return f"{st['mean']:.3f} [{st['ci95'][0]:.3f}, {st['ci95'][1]:.3f}]"

    lines = ["# The ladder's verdicts with T-SHAP as the share evidence: mm_shap's old default and new", "", *header,
             "", f"`mbias audit --probes {','.join(probes)} --max-samples {args.n}` on synth:shapes-p90/"
             f"{' and '.join(args.splits.split(','))} for every pinned zoo build and the two broken copies of "
             "shapes-p90 (as in "
             "`zoo_ladder.py`), with `probe_config: {mm_shap: ...}` at each setting. Without modality_shapley, "
             "T-SHAP is the share the verdict reads (the default audit runs modality_shapley, whose share ranks "
             "first, so there the tolerance cannot move a verdict at all).", "",
             f"Same verdict and severity: **{summary['n_same_verdict']} of {summary['n_rows']}**; largest change of "
             f"mean T-SHAP {summary['max_abs_t_shap_change']:.3f}; coalitions scored {summary['coalitions_ratio']:.2f}x "
             f"and audit time {summary['seconds_ratio']:.2f}x the old default's.", "",
             "| model | split | " + " | ".join(f"{n}: verdict | T-SHAP | SE (rms) | coalitions" for n in names)
             + " | same |", "|---|---|" + "---|" * (4 * len(names)) + "---|"]
    for r in rows:
        cells = []
        for n in names:
            x = r[n]
            se = "-" if x["t_shap_stderr"] is None else f"{x['t_shap_stderr']:.3f}"
            cells += [f"{x['verdict']} ({x['severity']})", stat(x["t_shap"]), se, f"{x['mean_evaluations']:.0f}"]
        lines.append(f"| {r['model']} | {r['split']} | " + " | ".join(cells) + f" | {'yes' if r['same_verdict'] else '**no**'} |")
    (OUT / "ladder.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ladder", action="store_true", help="audit the ladder at the old and the new default")
    ap.add_argument("--n", type=int, default=200, help="--ladder: examples per split")
    ap.add_argument("--tolerance", type=float, help="--ladder: the new default tolerance")
    ap.add_argument("--splits", default="test-balanced,test-cp", help="--ladder: the splits audited")
    ap.add_argument("--zoo-builds", default=",".join(ZOO_BUILDS))
    ap.add_argument("--zoo-samples", type=int, default=8)
    ap.add_argument("--real-samples", type=int, default=3)
    ap.add_argument("--budgets", default="6,8,10,14,20,30,40")
    ap.add_argument("--tolerances", default="0.005,0.01,0.015,0.02,0.03,0.05,0.1")
    ap.add_argument("--cap", type=int, default=20)
    ap.add_argument("--min-permutations", type=int, default=6)
    ap.add_argument("--reference-permutations", type=int, default=200)
    ap.add_argument("--real-reference-permutations", type=int, default=80)
    args = ap.parse_args()
    if args.ladder:
        if args.tolerance is None:
            from mbias.probes.mm_shap import TOLERANCE_DEFAULT

            args.tolerance = TOLERANCE_DEFAULT
        if args.tolerance is None:
            ap.error("--ladder needs --tolerance (or a default set in probes/mm_shap.py)")
        ladder(args)
    else:
        curve(args)


if __name__ == "__main__":
    main()
