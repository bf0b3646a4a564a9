"""The ladder: does the verdict read the planted bias right, step by step? Every pinned zoo build, and two
models that cannot see or cannot read.

The pinned builds (``mbias zoo list``) span cue-following on the counter-prior split from under 10% to over 90%,
at least one per band (``mbias.zoo.pinned.LADDER_BANDS``), so the verdict's severity bands are checked on real
steps, not on two ends. Each model is audited with ``mbias audit`` (probes modality_shapley, conflict, ablation)
on 200 examples of synth:shapes-p90/test-balanced (the wording predicts nothing) and of test-cp (the wording always
points to a wrong answer). Beside the verdict: the share of answers that are the wording's answer (the planted
cue, which the synthetic data declares), with its interval. The pinned shapes-p90 with its projector zeroed (it
cannot see) must read language-dominant; with its question-token embeddings zeroed (it cannot read)
vision-dominant. The two broken models are saved with ``save_pretrained`` and audited from their folders, as a
user's model is.

    python benchmarks/zoo_ladder.py [--n 200]

Writes benchmarks/results/zoo/ladder.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "zoo"
WORK = Path("/tmp/mbias-zoo-ladder")
PROBES = ["modality_shapley", "conflict", "ablation"]
BROKEN = {"p90, projector zeroed": ("blind", "language-dominant"),
          "p90, question embeddings zeroed": ("deaf", "vision-dominant")}


def broken_model(kind: str) -> str:
    """zoo:shapes-p90 with its projector (cannot see) or its question-token embeddings (cannot read) zeroed."""
    import torch
    from PIL import Image

    from mbias.example import Example
    from mbias.models import load_model
    from mbias.synth import PHRASINGS
    from mbias.zoo import model_identity

    folder = WORK / f"p90-{kind}-{model_identity('zoo:shapes-p90').rsplit(':', 1)[1]}"  # rebuilt if p90 changes
    if (folder / "config.json").exists():
        return str(folder)
    scorer = load_model("zoo:shapes-p90", device="cpu")
    with torch.no_grad():
        if kind == "blind":
            for part in scorer._parts(scorer.projector_modules):
                for p in part.parameters():
                    p.zero_()
        else:  # every token of every question as the prompt tokenizes it, and the masking token
            ids = {scorer.text_baseline_id()}
            for question in (q for qs in PHRASINGS.values() for q in qs):
                enc = scorer.encode(Example("x", Image.new("RGB", (32, 32)), question, "yes"))
                ids |= set(enc.prompt_ids[enc.question_positions].tolist())
            scorer.model.get_input_embeddings().weight[sorted(ids)] = 0.0
    scorer.model.save_pretrained(folder)
    scorer.processor.save_pretrained(folder)
    return str(folder)


def cue_following(out: Path, split: str) -> dict:
    """How often the audited model's answer is the wording's answer (the cue the synthetic split declares)."""
    from mbias.stats import bootstrap_mean
    from mbias.store import read_records
    from mbias.synth import load_synth

    data = load_synth(f"shapes-p90/{split}")
    records = read_records(out / "results.jsonl")
    return bootstrap_mean([float(r["prediction"] == data[r["index"]].meta["cue_answer"]) for r in records])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="examples per split")
    args = ap.parse_args()

    from mbias.diagnose.config import AuditConfig
    from mbias.diagnose.runner import run_audit
    from mbias.display import pct
    from mbias.provenance import results_header
    from mbias.reports.content import verdict_label
    from mbias.zoo.pinned import band_of, pinned_builds, pinned_record

    t0 = time.perf_counter()
    builds = pinned_builds()
    models = {}  # label -> (reference, pinned test-cp cue-following or None, expected)
    for build in sorted(set(builds.values()),
                        key=lambda b: pinned_record(b)["behaviour"]["test-cp"]["cue_following"]["mean"]):
        names = [n for n, b in builds.items() if b == build and n != b]
        cue = pinned_record(build)["behaviour"]["test-cp"]["cue_following"]
        models[f"{' / '.join(names) or build} ({build})"] = (f"zoo:{names[0] if names else build}", cue, None)
    for label, (kind, expected) in BROKEN.items():
        models[label] = (broken_model(kind), None, expected)
    rows = []
    for label, (ref, pinned_cue, expected) in models.items():
        for split in ("test-balanced", "test-cp"):
            out = WORK / f"{label.replace(', ', '-').replace(' ', '_').replace('/', '+')}-{split}"
            s = run_audit(ref, f"synth:shapes-p90/{split}", out, config=AuditConfig(max_samples=args.n, probes=PROBES),
                          overwrite=True, progress=False, report=False)
            v = s["verdict"]
            row = {"model": label, "reference": ref if ref.startswith("zoo:") else "saved folder", "split": split,
                   "band": band_of(pinned_cue["mean"]) if pinned_cue else None, "pinned_cue_following": pinned_cue,
                   "cue_following": cue_following(out, split), "verdict": verdict_label(v),
                   "dominant": v["dominant_modality"], "severity": v["severity"], "follows_wording": v["follows_text"],
                   "n_text_conflicts": v["n_text_conflicts"], "follows_image": v["follows_image"],
                   "language_share": {"mean": v["language_share"], "ci95": v["ci95"]}, "evidence": v["evidence"],
                   "accuracy": s["accuracy"], "expected": expected}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("model", "split", "verdict", "severity")}), flush=True)
    header, meta = results_header(wall_seconds=time.perf_counter() - t0)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ladder.json").write_text(json.dumps({"provenance": meta, "probes": PROBES, "n": args.n, "rows": rows},
                                                indent=2))

    def share(st):
        return f"{st['mean']:.2f} [{st['ci95'][0]:.2f}, {st['ci95'][1]:.2f}]"

    lines = ["# The ladder: the verdict on models whose bias we know", "", *header, "",
             f"`mbias audit --probes {','.join(PROBES)} --max-samples {args.n}` on synth:shapes-p90/test-balanced and "
             "test-cp, for every pinned zoo build (ordered by cue-following on test-cp, 500 examples, measured when "
             "it was pinned: its band) and two broken copies of the pinned shapes-p90. Follows cue = the share of "
             "answers that are the wording's (planted) answer on the audited samples. Follows wording = on the "
             "questions whose answer without the image is wrong, how often the model gives that answer with the "
             "image (what the verdict reads); follows image = where the image alone (question masked) answers "
             "wrongly, how often it gives that answer anyway. 95% intervals.", "",
             "| model | band (test-cp cue, pinned) | split | follows cue | verdict | severity | follows wording (n) "
             "| follows image | language share | accuracy | rests on |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        band = f"{r['band']} ({pct(r['pinned_cue_following'])})" if r["band"] else f"expected {r['expected']}"
        lines.append(f"| {r['model']} | {band} | {r['split']} | {pct(r['cue_following'])} | **{r['verdict']}** | "
                     f"{r['severity']} | {pct(r['follows_wording'])} ({r['n_text_conflicts']}) | "
                     f"{pct(r['follows_image'])} | {share(r['language_share'])} | {r['accuracy']:.3f} | "
                     f"{', '.join(r['evidence'])} |")
    (OUT / "ladder.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
