"""What ``BiasMonitorCallback`` costs a training run: the demo's fine-tune (zoo:shapes-p90, recipe poe with the
prior-table expert, batch 32, lr 1e-3, 100 steps) with and without ``--monitor-every 50`` at the default settings
(``monitor_samples`` held-out samples of synth:shapes-p90/val, conflict + modality_shapley), runs interleaved
(off, on, off, ...).

Reported: train() wall time per step for each arm (median over repeats), the callback's own seconds per audit
(timed inside it), and the overhead at --monitor-every 50 in steady state (one audit per 50 steps: audit seconds /
50 plain steps) and for the whole 100-step run (which also audits before step 1, so three audits). Timing on a
shared machine is noisy; the in-callback audit time is the steadier number. Beside it, the same slice audited
outside training, by the monitor's batched path and by the audit's per-sample path (``audit_records``, what the
monitor ran before it batched), and the half-widths of the logged numbers' 95% intervals at that sample count.

    python benchmarks/monitor_overhead.py [--repeats 3] [--steps 100] [--every 50] [--model zoo:shapes-p90]
"""

from __future__ import annotations

import argparse
import json
import os
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
    p.add_argument("--samples", type=int, default=None, help="default: FinetuneConfig's monitor_samples")
    p.add_argument("--model", default="zoo:shapes-p90", help="the demo's model, or a folder holding a build of it")
    args = p.parse_args()
    from mbias.finetune.config import FinetuneConfig
    from mbias.provenance import results_header

    if args.samples is None:
        args.samples = FinetuneConfig.monitor_samples
    from mbias.zoo import zoo_model_path

    if args.model.startswith("zoo:"):
        zoo_model_path(args.model.removeprefix("zoo:"))  # built (or read) before any timing
    t0 = time.perf_counter()
    runs = {"off": [], "on": []}
    for _ in range(args.repeats):
        for arm in ("off", "on"):
            runs[arm].append(run(args.model, args.steps, args.every if arm == "on" else None, args.samples))
            print(arm, round(runs[arm][-1]["seconds_per_step"], 4), runs[arm][-1]["audits"], flush=True)
    import torch

    off = statistics.median(r["seconds_per_step"] for r in runs["off"])
    on = statistics.median(r["seconds_per_step"] for r in runs["on"])
    audit = statistics.median(s for r in runs["on"] for s in r["audits"])
    steady = audit / (args.every * off)
    outside = audit_paths(args.model, args.samples, args.repeats)
    print("outside training", outside, flush=True)
    measurements = [h for r in runs["on"] for h in r["monitor"]]
    keys = ("accuracy", "follows_text", "language_share")
    ci = {k: statistics.median(h[f"mbias/{k}_ci95"] for h in measurements if f"mbias/{k}_ci95" in h) for k in keys
          if any(f"mbias/{k}_ci95" in h for h in measurements)}
    conflicts = statistics.median(h["mbias/n_text_conflicts"] for h in measurements if "mbias/n_text_conflicts" in h)
    lines, header = results_header(wall_seconds=time.perf_counter() - t0)
    summary = {"model": args.model, "steps": args.steps, "every": args.every, "samples": args.samples,
               "repeats": args.repeats, "seconds_per_step_off": off, "seconds_per_step_on": on,
               "run_overhead": on / off - 1, "audit_seconds": audit, "steady_state_overhead": steady,
               "outside_training": outside, "ci95_half_width": ci, "n_text_conflicts": conflicts,
               "threads": torch.get_num_threads(), "load_average_at_end": os.getloadavg()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "overhead.json").write_text(json.dumps({"provenance": header, "summary": summary, "runs": runs},
                                                  indent=1) + "\n")
    labels = {"accuracy": "mbias/accuracy", "follows_text": "mbias/follows_text",
              "language_share": "mbias/language_share"}
    text = lines + [
        "", f"# BiasMonitorCallback overhead on the demo's fine-tune ({args.steps} steps, --monitor-every "
        f"{args.every}, {args.samples} samples)", "", f"Model: {args.model}", "",
        f"Threads: {torch.get_num_threads()} (torch.get_num_threads()); other jobs were running on the machine, "
        "and the arms are interleaved so that both see them.", "",
        f"| | seconds per step (median of {args.repeats}) |", "|---|---:|",
        f"| without the callback | {off:.4f} |", f"| with the callback | {on:.4f} |", "",
        f"- one audit of {args.samples} held-out samples (conflict + modality_shapley), timed inside the callback: "
        f"{audit:.2f} s (median of {sum(len(r['audits']) for r in runs['on'])})",
        f"- steady-state overhead at --monitor-every {args.every}: {100 * steady:.1f}% (one audit per "
        f"{args.every} steps of {off:.3f} s)",
        f"- whole {args.steps}-step run, three audits (before step 1, at {args.every} and {2 * args.every}): "
        f"{100 * (on / off - 1):+.1f}% wall time per step",
        "",
        f"## The same {args.samples} samples audited outside training (the model before fine-tuning, median of "
        f"{args.repeats})", "",
        "| path | seconds per audit |", "|---|---:|",
        f"| the monitor's, batched across samples | {outside['batched_seconds']:.2f} |",
        f"| the audit's, one sample at a time (`audit_records`) | {outside['per_sample_seconds']:.2f} |",
        "", f"Largest difference between the two paths' per-sample numbers: {outside['max_difference']:.1e} "
        f"(predictions equal: {outside['same_predictions']}).",
        "", f"## Sampling error of the logged numbers at {args.samples} samples", "",
        "Half-width of each logged number's 95% bootstrap interval (clustered by image; `..._ci95` in the log), "
        f"median over the {len(measurements)} measurements above; follows_text is a rate over the wording "
        f"conflicts only (median {conflicts:.0f} of the {args.samples}).", "",
        "| logged number | 95% half-width |", "|---|---:|",
        *[f"| `{labels[k]}` | {v:.3f} |" for k, v in ci.items()],
    ]
    (OUT / "overhead.md").write_text("\n".join(text) + "\n")
    print("\n".join(text[len(lines):]))


def audit_paths(model: str, samples: int, repeats: int) -> dict:
    """One audit of the slice, outside training, by the monitor's batched path and by the audit's per-sample path:
    median seconds of each, and how far apart their per-sample records are."""
    import torch

    from mbias.data import load_data
    from mbias.diagnose.batched import BatchedAudit
    from mbias.diagnose.config import AuditConfig, build_probes
    from mbias.diagnose.runner import audit_records, eval_mode
    from mbias.finetune.monitor import CHEAP_PROBES
    from mbias.models import LoadOptions, load_model

    scorer = load_model(model, LoadOptions())
    config = AuditConfig(probes=list(CHEAP_PROBES), max_samples=samples)
    probes = build_probes(config)
    examples = load_data("synth:shapes-p90/val", max_samples=samples).examples
    todo = list(range(len(examples)))
    times = {"batched": [], "per_sample": []}
    with eval_mode(scorer.model), torch.no_grad():
        for _ in range(repeats):
            batched = BatchedAudit(scorer, examples, probes, config)
            batched.records(todo)  # the first call makes the encodings, once per monitor; the second is timed:
            t = time.perf_counter()  # what each later measurement costs
            got = batched.records(todo)
            times["batched"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ref = list(audit_records(scorer, examples, todo, probes, config))
            times["per_sample"].append(time.perf_counter() - t)

    def numbers(record: dict) -> list[float]:
        out = [record["correct"]]
        for name in CHEAP_PROBES:
            out += [v for v in record["probes"][name].values() if isinstance(v, float)]
        return out

    diff = max(abs(a - b) for r, g in zip(ref, got, strict=True) for a, b in zip(numbers(r), numbers(g), strict=True))
    return {"batched_seconds": statistics.median(times["batched"]),
            "per_sample_seconds": statistics.median(times["per_sample"]), "max_difference": diff,
            "same_predictions": all(r["prediction"] == g["prediction"] and r["probes"]["conflict"]["pred_text_alone"]
                                    == g["probes"]["conflict"]["pred_text_alone"] for r, g in zip(ref, got, strict=True)),
            "times": times}


if __name__ == "__main__":
    main()
