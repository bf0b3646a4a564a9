"""Per-step time and peak memory of each recipe relative to plain LoRA, measured side by side in one run.

Each recipe trains zoo:shapes-p90 for ``--steps`` steps in its own child process (so peak memory is its own);
time per step is the mean over steps after ``--skip`` warm-up steps (from training_log.jsonl timestamps; a mean,
so periodic work such as MILES's held-out measurements is counted), peak
memory is the child's maximum resident set size. The recipes run in rounds (every recipe once per round) so slow
drift of a noisy machine hits all of them alike, and each recipe's fastest round is reported (load from other
work only ever adds time).

    python benchmarks/recipe_cost.py [--steps 100] [--rounds 3]

Writes benchmarks/results/recipe_cost.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "cost"
RUNS = [  # (row name, recipe, recipe settings)
    ("lora", "plain", {}), ("msam", "msam", {}), ("msam direction=previous", "msam", {"direction": "previous"}),
    ("miles", "miles", {}), ("mnl", "mnl", {}), ("cggm", "cggm", {}), ("ogm_ge", "ogm_ge", {}),
    # the debiasing recipes at the settings the recipe comparison uses (results/recipes/legacy-selection.md)
    ("poe prior_table", "poe", {"bias_expert": "prior_table"}), ("poe no_image", "poe", {"bias_expert": "no_image"}),
    ("lmh prior_table", "lmh", {"bias_expert": "prior_table", "entropy_weight": 0.1}),
    ("mdpo crop no_image", "mdpo", {"corruption": "crop", "rejected_answer": "no_image", "beta": 1.0}),
]


def _train(recipe: str, recipe_config: dict, steps: int, out: str, queue) -> None:
    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.run import run_finetune

    run_finetune("zoo:shapes-p90", "synth:shapes-p90/train", out, progress=False, config=FinetuneConfig(
        recipe=recipe, max_steps=steps, per_device_train_batch_size=32, learning_rate=1e-3, seed=0,
        recipe_config=recipe_config))
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # MiB (Linux reports KiB)


def main() -> None:
    from mbias.provenance import results_header

    started = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the timing")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from mbias.zoo import zoo_model_path

    zoo_model_path("shapes-p90")  # build once, outside the timed children
    ctx = mp.get_context("spawn")
    per_step = {name: [] for name, _, _ in RUNS}
    peak = {name: [] for name, _, _ in RUNS}
    for round_ in range(args.rounds):
        for name, recipe, recipe_config in RUNS:
            out = Path(f"/tmp/mbias-recipe-cost/{name.replace(' ', '_')}-{round_}")
            queue = ctx.Queue()
            proc = ctx.Process(target=_train, args=(recipe, recipe_config, args.steps, str(out), queue))
            proc.start()
            rss = queue.get()
            proc.join()
            times = [json.loads(line)["time"] for line in (out / "training_log.jsonl").read_text().splitlines()]
            per_step[name].append((times[-1] - times[args.skip]) / (len(times) - 1 - args.skip))
            peak[name].append(rss)
            print(json.dumps({"round": round_, "recipe": name, "s_per_step": per_step[name][-1],
                              "peak_rss_mib": round(rss)}), flush=True)
    rows = []
    base_t, base_m = min(per_step["lora"]), statistics.median(peak["lora"])
    for r, _, _ in RUNS:
        # min over rounds: other load on a shared machine only ever adds time, so the fastest round is the
        # closest to the recipe's own cost (timeit's reasoning); memory does not depend on load
        t, m = min(per_step[r]), statistics.median(peak[r])
        rows.append({"recipe": r, "s_per_step": t, "time_vs_lora": t / base_t, "peak_rss_mib": m,
                     "memory_vs_lora": m / base_m})
    meta = {"command": f"python benchmarks/recipe_cost.py --steps {args.steps} --rounds {args.rounds}",
            "date": time.strftime("%Y-%m-%d"), "device": "cpu (2 cores)", "batch_size": 32}
    header, provenance = results_header(wall_seconds=time.perf_counter() - started)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "recipe_cost.json").write_text(json.dumps({"provenance": provenance, "meta": meta, "rows": rows}, indent=2))
    lines = [*header, "", f"# Recipe cost relative to plain LoRA ({meta['date']}, {meta['device']})", "", f"`{meta['command']}`",
             "", "zoo:shapes-p90, batch 32, LoRA r=16 on the LLM and projector. Mean seconds per optimizer step "
             f"after {args.skip} warm-up steps (fastest of {args.rounds} rounds, the recipes interleaved), and the "
             "training process's peak resident memory.", "",
             "| recipe | s/step | time vs lora | peak RSS MiB | memory vs lora |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['recipe']} | {row['s_per_step']:.3f} | {row['time_vs_lora']:.2f}x | "
                     f"{row['peak_rss_mib']:.0f} | {row['memory_vs_lora']:.2f}x |")
    (OUT / "recipe_cost.md").write_text("\n".join(lines) + "\n")
    print((OUT / "recipe_cost.md").read_text())


if __name__ == "__main__":
    main()
