"""How reproducible is the planted bias? zoo:shapes-p90 built with several training seeds and thread counts.

The zoo trains a tiny model from scratch, and float results differ with the CPU and the number of threads, so the
same zoo name can end up more or less biased on another machine. This builds the p90 model for each (seed,
threads) pair and measures what matters downstream: counter-prior accuracy, how often it answers with the cue,
and balanced accuracy. Builds with the machine's default thread count are the cached ``zoo:shapes-p90-seedN``
models that ``recipe_comparison.py`` uses as its base builds; the others go to an experiments cache.

    python benchmarks/zoo_spread.py [--seeds 0,1,2] [--threads 1,2,4] [--n 500]

Writes benchmarks/results/zoo_spread.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "zoo"


def build(seed: int, threads: int, default_threads: int) -> Path:
    import torch

    from mbias.zoo import _train_into, cache_root, zoo_entry, zoo_model_path

    name = "shapes-p90" if seed == 0 else f"shapes-p90-seed{seed}"
    if threads == default_threads:
        return zoo_model_path(name, progress=False)
    entry = zoo_entry(name)
    folder = cache_root() / "experiments" / "zoo-spread" / f"{entry.name}-{entry.key()}-t{threads}"
    if not (folder / "zoo.json").exists():
        torch.set_num_threads(threads)
        try:
            _train_into(entry, folder, progress=False)
        finally:
            torch.set_num_threads(default_threads)
    return folder


def main() -> None:
    from mbias.provenance import results_header

    started = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--n", type=int, default=500, help="examples per test split")
    args = ap.parse_args()

    import torch

    from mbias.models import load_model
    from mbias.synth import load_synth
    from mbias.zoo.train import choice_accuracy

    default_threads = torch.get_num_threads()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for threads in (int(t) for t in args.threads.split(",")):
            path = build(seed, threads, default_threads)
            info = json.loads((path / "zoo.json").read_text())
            scorer = load_model(str(path), device="cpu")
            row = {"seed": seed, "threads": threads, "build_seconds": info["build_seconds"]}
            for split in ("test-cp", "test-balanced"):
                ds = load_synth(f"shapes-p90/{split}")
                res = choice_accuracy(scorer, [ds[i] for i in range(args.n)])
                row[split], row[f"{split}/cue_rate"] = round(res["accuracy"], 4), round(res["cue_rate"], 4)
            rows.append(row)
            print(json.dumps(row), flush=True)

    cp = np.array([r["test-cp"] for r in rows])
    meta = {"command": f"python benchmarks/zoo_spread.py --seeds {args.seeds} --threads {args.threads} --n {args.n}",
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
            "default_threads": default_threads, "date": time.strftime("%Y-%m-%d")}
    header, provenance = results_header(wall_seconds=time.perf_counter() - started)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "spread.json").write_text(json.dumps({"provenance": provenance, "meta": meta, "rows": rows}, indent=2))
    lines = [*header, "", f"# Spread of the planted bias over builds of zoo:shapes-p90 ({meta['date']})", "",
             f"`{meta['command']}`", "", f"Machine: {meta['machine']}, default {default_threads} threads. "
             f"{args.n} examples per split.", "",
             "| training seed | threads | test-cp | cue-following on test-cp | test-balanced | build s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['threads']} | {r['test-cp']:.3f} | {r['test-cp/cue_rate']:.3f} | "
              f"{r['test-balanced']:.3f} | {r['build_seconds']:.0f} |" for r in rows]
    lines += ["", f"test-cp over all builds: mean {cp.mean():.3f}, min {cp.min():.3f}, max {cp.max():.3f} "
              f"(sd {cp.std(ddof=1) if len(cp) > 1 else 0:.3f})."]
    (OUT / "spread.md").write_text("\n".join(lines) + "\n")
    print((OUT / "spread.md").read_text())


if __name__ == "__main__":
    main()
