"""Do the probes find the bias we planted? Language share of every zoo model, with 95% intervals.

For each pinned zoo build (``mbias zoo list``: the public names and the ladder's extra builds), ``modality_shapley`` (image vs question, exact) and ``mm_shap`` (question tokens
vs image patches, antithetic permutation sampling) on synth:shapes-pNN/test-balanced, where the wording carries
no information about the answer: any extra reliance on it is the planted prior at work.

    python benchmarks/zoo_probe_shares.py [--n 200] [--n-mm 60]

Writes benchmarks/results/zoo/probe_shares.json and .md. The counter-prior error beside each share is the
build's measured behaviour recorded when it was pinned (500 examples of synth:shapes-p90/test-cp).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "zoo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="samples for modality_shapley")
    ap.add_argument("--n-mm", type=int, default=60, help="samples for mm_shap (the costly one)")
    args = ap.parse_args()

    from mbias.display import fmt
    from mbias.models import load_model
    from mbias.probes import PROBES, SampleContext
    from mbias.probes.mm_shap import MMShapConfig
    from mbias.provenance import results_header
    from mbias.synth import PRIORS, load_synth
    from mbias.zoo.pinned import pinned_builds, pinned_record

    t_start = time.perf_counter()
    builds = pinned_builds()
    rows = []
    for build in sorted(set(builds.values())):
        key = build.split("-")[1].removeprefix("p")
        prior = PRIORS[key]
        names = [n for n, b in builds.items() if b == build and n != b]
        label = f"zoo:{names[0] if names else build}" + (f" ({build})" if names else "")
        scorer = load_model(f"zoo:{build}", device="cpu")
        ds = load_synth(f"shapes-p{key}/test-balanced")
        ms, mm = PROBES.get("modality_shapley")(), PROBES.get("mm_shap")(MMShapConfig(n_permutations=10))
        ms_recs, mm_recs, t0 = [], [], time.perf_counter()
        for i in range(args.n):
            ctx = SampleContext(scorer, scorer.prepare(ds[i]), run_seed=0, swap_image=ds[(i + 1) % len(ds)].image)
            ms_recs.append(ms.run(ctx))
            if i < args.n_mm:
                mm_recs.append(mm.run(ctx))
        groups = [ds[i].id for i in range(args.n)]
        s_ms, s_mm = ms.summarize(ms_recs, groups), mm.summarize(mm_recs, groups[: args.n_mm])
        row = {"model": label, "prior": prior,
               "test_cp_error": round(1 - pinned_record(build)["behaviour"]["test-cp"]["accuracy"]["mean"], 4),
               "language_share": s_ms["language_share"], "language_share_logprob": s_ms["language_share_logprob"],
               "language_share_acc": s_ms["language_share_acc"],
               "pooled_language_share": s_ms["pooled_language_share"],
               "t_shap": s_mm["t_shap"], "t_shap_per_player": s_mm["t_shap_per_player"],
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps({k: (v["mean"] if isinstance(v, dict) else v) for k, v in row.items()}), flush=True)

    from scipy.stats import spearmanr

    rho = float(spearmanr([r["language_share"]["mean"] for r in rows], [r["test_cp_error"] for r in rows])[0])
    header, meta = results_header(wall_seconds=time.perf_counter() - t_start)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "probe_shares.json").write_text(json.dumps({"provenance": meta, "n": args.n, "n_mm": args.n_mm, "rows": rows, "spearman_share_vs_cp_error": rho},
                                                      indent=2))

    lines = ["# Probes on the zoo: language share vs planted prior", "", *header, "",
             "Every pinned zoo build: synth:shapes-pNN/test-balanced, modality_shapley on "
             f"{args.n} samples, mm_shap (10 antithetic permutations) on {args.n_mm}; mean [95% bootstrap CI].", "",
             "Headline values are renormalised over the answer choices (the probes' default); the raw log-prob "
             "column shows why: the question also names the kind of answer wanted, which inflates the text's share "
             "for every model.", "",
             "| model | prior p | counter-prior error | language share | language share (raw log-prob) | "
             "language share (accuracy) | T-SHAP | T-SHAP per player |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        err = f"{r['test_cp_error']:.3f}"
        lines.append(f"| {r['model']} | {r['prior']:.2f} | {err} | {fmt(r['language_share'], 3)} | "
                     f"{fmt(r['language_share_logprob'], 3)} | {fmt(r['language_share_acc'], 3)} | "
                     f"{fmt(r['t_shap'], 3)} | {fmt(r['t_shap_per_player'], 3)} |")
    lines += ["", f"Spearman correlation between language share and counter-prior error: {rho:.2f}"]
    (OUT / "probe_shares.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
