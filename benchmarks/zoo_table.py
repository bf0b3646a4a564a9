"""Zoo ground truth: build every zoo model and evaluate it on the three test splits.

Shows whether the planted prior is real: counter-prior (test-cp) accuracy against p, in-distribution (test-id)
and balanced accuracy beside it. Also records each model's build time (the zoo promises <= 2 minutes on 2 CPU
cores).

    python benchmarks/zoo_table.py [--force] [--n 500]

Writes benchmarks/results/zoo_table.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

OUT = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild models even if cached (to time the build)")
    ap.add_argument("--n", type=int, default=500, help="examples per test split")
    args = ap.parse_args()

    import torch

    from mbias.models import load_model
    from mbias.synth import PRIORS, load_synth
    from mbias.zoo import build_zoo_model, model_dir, zoo_entry
    from mbias.zoo.train import choice_accuracy

    rows = []
    for key in PRIORS:
        name = f"shapes-p{key}"
        t0 = time.perf_counter()
        path = build_zoo_model(name, force=args.force, progress=False)
        wall = time.perf_counter() - t0
        info = json.loads((model_dir(zoo_entry(name)) / "zoo.json").read_text())
        scorer = load_model(str(path), device="cpu")
        row = {"model": f"zoo:{name}", "prior": PRIORS[key], "build_seconds": info["build_seconds"],
               "train_seconds": info["train_seconds"], "rebuilt_now": args.force, "wall_seconds": round(wall, 1)}
        for split in ("test-id", "test-cp", "test-balanced"):
            ds = load_synth(f"{name}/{split}")
            res = choice_accuracy(scorer, [ds[i] for i in range(args.n)])
            row[split] = round(res["accuracy"], 4)
            row[f"{split}/cue_rate"] = round(res["cue_rate"], 4)
            row[f"{split}/per_category"] = {k: round(v, 3) for k, v in res["per_category"].items()}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if "/" not in k}), flush=True)

    meta = {"command": "python benchmarks/zoo_table.py" + (" --force" if args.force else ""), "n_per_split": args.n,
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    OUT.mkdir(exist_ok=True)
    (OUT / "zoo_table.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# Zoo ground truth ({meta['date']}, {meta['machine']}, {meta['threads']} threads)", "",
             f"`{meta['command']}`, {args.n} examples per split; accuracy = argmax over the answer choices.", "",
             "| model | prior p | test-id | test-cp | test-balanced | cue-following on test-cp | build s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['prior']:.2f} | {r['test-id']:.3f} | {r['test-cp']:.3f} | "
                     f"{r['test-balanced']:.3f} | {r['test-cp/cue_rate']:.3f} | {r['build_seconds']:.0f} |")
    lines += ["", "Per question type, test-cp:", "", "| model | " + " | ".join(rows[0]["test-cp/per_category"]) + " |",
              "|---|" + "---|" * len(rows[0]["test-cp/per_category"])]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(f"{v:.2f}" for v in r["test-cp/per_category"].values()) + " |")
    (OUT / "zoo_table.md").write_text("\n".join(lines) + "\n")
    print((OUT / "zoo_table.md").read_text())


if __name__ == "__main__":
    main()
