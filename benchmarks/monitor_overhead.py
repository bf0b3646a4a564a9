"""What ``BiasMonitorCallback`` costs a training run: the demo's fine-tune (zoo:shapes-p90, recipe poe with the
prior-table expert, batch 32, lr 1e-3, 100 steps) with and without ``--monitor-every 50`` at the default settings
(64 held-out samples of synth:shapes-p90/val, conflict + modality_shapley), runs interleaved (off, on, off, ...).

Reported: train() wall time per step for each arm (median over repeats), the callback's own seconds per audit
(timed inside it), and the overhead at --monitor-every 50 in steady state (one audit per 50 steps: audit seconds /
50 plain steps) and for the whole 100-step run (which also audits before step 1, so three audits). Timing on a
shared machine is noisy; the in-callback audit time is the steadier number.

    python benchmarks/monitor_overhead.py [--repeats 3] [--steps 100] [--every 50] [--model zoo:shapes-p90]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "monitor"


def run(model: str, steps: int, every: int | None, samples: int) -> dict:
    import mbias
    from mbias.demo import DEMO_RECIPE, DEMO_RECIPE_CONFIG, TRAIN_DATA

    monitor = {} if every is None else {"monitor_data": "synth:shapes-p90/val", "monitor_every": every,
                                        "monitor_samples": samples}
    result = mbias.finetune(model, data=TRAIN_DATA, recipe=DEMO_RECIPE, recipe_config=DEMO_RECIPE_CONFIG,
                            max_steps=steps, per_device_train_batch_size=32, learning_rate=1e-3, progress=False,
                            report_to="none", **monitor)
    runtime = next(e["train_runtime"] for e in result.trainer.state.log_history if "train_runtime" in e)
    return {"train_seconds": runtime, "seconds_per_step": runtime / steps,
            "audits": [h["seconds"] for h in result.monitor], "monitor": result.monitor}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--model", default="zoo:shapes-p90", help="the demo's model, or a folder holding a build of it")
    args = p.parse_args()
    from mbias.provenance import results_header
    from mbias.zoo import zoo_model_path

    if args.model.startswith("zoo:"):
        zoo_model_path(args.model.removeprefix("zoo:"))  # built (or read) before any timing
    t0 = time.perf_counter()
    runs = {"off": [], "on": []}
    for _ in range(args.repeats):
        for arm in ("off", "on"):
            runs[arm].append(run(args.model, args.steps, args.every if arm == "on" else None, args.samples))
            print(arm, round(runs[arm][-1]["seconds_per_step"], 4), runs[arm][-1]["audits"], flush=True)
    off = statistics.median(r["seconds_per_step"] for r in runs["off"])
    on = statistics.median(r["seconds_per_step"] for r in runs["on"])
    audit = statistics.median(s for r in runs["on"] for s in r["audits"])
    steady = audit / (args.every * off)
    lines, header = results_header(wall_seconds=time.perf_counter() - t0)
    summary = {"model": args.model, "steps": args.steps, "every": args.every, "samples": args.samples, "repeats": args.repeats,
               "seconds_per_step_off": off, "seconds_per_step_on": on, "run_overhead": on / off - 1,
               "audit_seconds": audit, "steady_state_overhead": steady}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "overhead.json").write_text(json.dumps({"provenance": header, "summary": summary, "runs": runs},
                                                  indent=1) + "\n")
    text = lines + [
        "", f"# BiasMonitorCallback overhead on the demo's fine-tune ({args.steps} steps, --monitor-every "
        f"{args.every}, {args.samples} samples)", "", f"Model: {args.model}", "",
        f"| | seconds per step (median of {args.repeats}) |", "|---|---:|",
        f"| without the callback | {off:.4f} |", f"| with the callback | {on:.4f} |", "",
        f"- one audit of {args.samples} held-out samples (conflict + modality_shapley): {audit:.2f} s (median of "
        f"{sum(len(r['audits']) for r in runs['on'])})",
        f"- steady-state overhead at --monitor-every {args.every}: {100 * steady:.1f}% (one audit per "
        f"{args.every} steps of {off:.3f} s)",
        f"- whole {args.steps}-step run, three audits (before step 1, at {args.every} and {2 * args.every}): "
        f"{100 * (on / off - 1):+.1f}% wall time per step",
    ]
    (OUT / "overhead.md").write_text("\n".join(text) + "\n")
    print("\n".join(text[-8:]))


if __name__ == "__main__":
    main()
