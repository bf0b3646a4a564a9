"""Does the verdict read the planted bias right? Every zoo model, and two models that cannot see or cannot read.

Each model is audited with ``mbias audit`` (probes modality_shapley, conflict, ablation) on 200 examples of
synth:shapes-p90/test-balanced (what a user's data resembles: the wording predicts nothing) and of test-cp (the
wording always points to a wrong answer). Expected: p00, p50, p70 (their planted prior did not survive training)
not language-reliant; p90 and p99 language-reliant, p99 more severely, and so are two more builds of p90 (training
seeds 1 and 2, whose priors survived more and less: results/zoo_spread.md); the p90 model with its projector zeroed
(it cannot see) language-dominant; with its question-token embeddings zeroed (it cannot read) vision-dominant.
The two broken models are saved with ``save_pretrained`` and audited from their folders, as a user's model is.

    python benchmarks/zoo_verdicts.py [--n 200]

Writes benchmarks/results/zoo_verdicts.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

OUT = Path(__file__).parent / "results"
WORK = Path("/tmp/mbias-zoo-verdicts")
PROBES = ["modality_shapley", "conflict", "ablation"]
EXPECTED = {"p00": "not language-reliant", "p50": "not language-reliant", "p70": "not language-reliant",
            "p90": "language-reliant", "p99": "language-reliant, more severe than p90",
            "p90, training seed 1": "language-reliant", "p90, training seed 2": "language-reliant",
            "p90, projector zeroed": "language-dominant", "p90, question embeddings zeroed": "vision-dominant"}


def broken_model(kind: str) -> str:
    """zoo:shapes-p90 with its projector (cannot see) or its question-token embeddings (cannot read) zeroed."""
    import torch
    from PIL import Image

    from mbias.example import Example
    from mbias.models import load_model
    from mbias.synth import PHRASINGS

    folder = WORK / f"p90-{kind}"
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="examples per split")
    args = ap.parse_args()

    from mbias.diagnose.config import AuditConfig
    from mbias.diagnose.runner import run_audit
    from mbias.display import pct
    from mbias.reports.content import verdict_label

    models = {f"p{k}": f"zoo:shapes-p{k}" for k in ("00", "50", "70", "90", "99")}
    models.update({f"p90, training seed {s}": f"zoo:shapes-p90-seed{s}" for s in (1, 2)})  # other builds
    models["p90, projector zeroed"] = broken_model("blind")
    models["p90, question embeddings zeroed"] = broken_model("deaf")
    rows = []
    for name, ref in models.items():
        for split in ("test-balanced", "test-cp"):
            out = WORK / f"{name.replace(', ', '-').replace(' ', '_')}-{split}"
            s = run_audit(ref, f"synth:shapes-p90/{split}", out, config=AuditConfig(max_samples=args.n, probes=PROBES),
                          overwrite=True, progress=False, report=False)
            v = s["verdict"]
            row = {"model": name, "split": split, "verdict": verdict_label(v), "dominant": v["dominant_modality"],
                   "severity": v["severity"], "follows_wording": v["follows_text"], "follows_image": v["follows_image"],
                   "language_share": {"mean": v["language_share"], "ci95": v["ci95"]}, "evidence": v["evidence"],
                   "accuracy": s["accuracy"], "expected": EXPECTED[name]}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("model", "split", "verdict", "severity")}), flush=True)
    meta = {"command": f"python benchmarks/zoo_verdicts.py --n {args.n}", "probes": PROBES, "n": args.n,
            "date": time.strftime("%Y-%m-%d")}
    OUT.mkdir(exist_ok=True)
    (OUT / "zoo_verdicts.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))

    def share(st):
        return f"{st['mean']:.2f} [{st['ci95'][0]:.2f}, {st['ci95'][1]:.2f}]"

    lines = [f"# The verdict on models whose bias we know ({meta['date']})", "", f"`{meta['command']}`", "",
             f"`mbias audit --probes {','.join(PROBES)} --max-samples {args.n}` on synth:shapes-p90/test-balanced and "
             "test-cp. Follows wording = on the questions whose answer without the image is wrong, how often the "
             "model gives that answer with the image; follows image = where the image alone (question masked) "
             "answers wrongly, how often it gives that answer anyway. 95% intervals.", "",
             "| model | split | expected | verdict | severity | follows wording | follows image | language share "
             "| accuracy | rests on |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['split']} | {r['expected']} | **{r['verdict']}** | {r['severity']} | "
                     f"{pct(r['follows_wording'])} | {pct(r['follows_image'])} | {share(r['language_share'])} | "
                     f"{r['accuracy']:.3f} | {', '.join(r['evidence'])} |")
    (OUT / "zoo_verdicts.md").write_text("\n".join(lines) + "\n")
    print((OUT / "zoo_verdicts.md").read_text())


if __name__ == "__main__":
    main()
