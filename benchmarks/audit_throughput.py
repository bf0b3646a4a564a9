"""Audit throughput on CPU: samples per second of the default audit (every probe) on the demo's zoo model, and
where the time goes, probe by probe.

    python benchmarks/audit_throughput.py [--samples 100]

Writes benchmarks/results/audit_throughput.{json,md}. The end-to-end number is ``mbias audit`` itself (manifest,
records, summary, no HTML) timed from the outside; the per-probe split comes from a second pass that times each
probe separately on the same samples.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mbias.provenance import results_header

OUT = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=100)
    args = ap.parse_args()
    started = time.perf_counter()

    import torch

    from mbias.diagnose.config import AuditConfig, build_probes
    from mbias.models import load_model
    from mbias.probes import SampleContext
    from mbias.synth import load_synth
    from mbias.zoo import zoo_model_path

    zoo_model_path("shapes-p90")
    work = Path("/tmp/mbias-audit-throughput")
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, "-m", "mbias", "audit", "--model", "zoo:shapes-p90", "--data", "synth:shapes-p90/test-cp",
           "--out", str(work), "--max-samples", str(args.samples), "--no-progress", "--no-report"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0

    scorer = load_model("zoo:shapes-p90", device="cpu")
    probes = build_probes(AuditConfig())
    ds = load_synth("shapes-p90/test-cp")
    per_probe = dict.fromkeys(probes, 0.0)
    prep = 0.0
    for i in range(args.samples):
        t = time.perf_counter()
        ctx = SampleContext(scorer, scorer.prepare(ds[i]), swap_image=ds[(i + 1) % len(ds)].image)
        prep += time.perf_counter() - t
        for name, probe in probes.items():
            t = time.perf_counter()
            probe.run(ctx)
            per_probe[name] += time.perf_counter() - t
    total = prep + sum(per_probe.values())
    result = {
        "command": f"python benchmarks/audit_throughput.py --samples {args.samples}",
        "audit_command": " ".join(cmd[1:]), "samples": args.samples, "wall_seconds": round(wall, 2),
        "samples_per_second": round(args.samples / wall, 3), "threads": torch.get_num_threads(),
        "seconds_per_sample": {"prepare": prep / args.samples, **{k: v / args.samples for k, v in per_probe.items()}},
        "date": time.strftime("%Y-%m-%d"),
    }
    header, result["provenance"] = results_header(wall_seconds=time.perf_counter() - started)
    OUT.mkdir(exist_ok=True)
    (OUT / "audit_throughput.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Audit throughput on CPU ({result['date']}, {result['threads']} threads)", "", *header, "",
             f"`{result['command']}` times `{result['audit_command']}` end to end (process start, model load, "
             "all default probes, results and summary; no HTML).", "",
             f"**{result['samples_per_second']:.2f} samples/s** ({args.samples} samples in {wall:.1f} s).", "",
             "| stage | ms / sample | share |", "|---|---|---|"]
    for name, sec in result["seconds_per_sample"].items():
        lines.append(f"| {name} | {sec * 1000:.1f} | {sec * args.samples / total:.0%} |")
    lines += ["", "What each probe spends against the fewest tokens its measure needs, at real shapes, is "
              "`benchmarks/audit_cost.py`'s (results/cost/audit_cost.md)."]
    (OUT / "audit_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))




if __name__ == "__main__":
    main()
