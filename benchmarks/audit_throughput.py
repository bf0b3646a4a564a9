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
    prefix = prefix_cache_potential(scorer, probes, ds, min(20, args.samples))
    result = {
        "command": f"python benchmarks/audit_throughput.py --samples {args.samples}",
        "audit_command": " ".join(cmd[1:]), "samples": args.samples, "wall_seconds": round(wall, 2),
        "samples_per_second": round(args.samples / wall, 3), "threads": torch.get_num_threads(),
        "seconds_per_sample": {"prepare": prep / args.samples, **{k: v / args.samples for k, v in per_probe.items()}},
        "prefix_cache_potential": prefix, "date": time.strftime("%Y-%m-%d"),
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
    lines += ["", "How much a KV cache of the prompt prefix shared with the unmasked input could save (an upper bound: "
              "every scored row reuses the cached prefix up to its first masked position, which is computed once per "
              f"example), measured over the forward passes of {prefix['samples']} samples:", "",
              f"- rows whose image is left whole: {prefix['rows_image_whole']:.0%} of {prefix['rows']} rows",
              f"- prompt+answer tokens in a reusable prefix, this model ({prefix['image_tokens']} image tokens): "
              f"{prefix['saving_this_model']:.0%}",
              f"- the same rows with LLaVA-1.5's 576 image tokens: {prefix['saving_576_image_tokens']:.0%}; caching "
              f"only for rows whose image is whole (one shared prefix per batch): "
              f"{prefix['saving_576_whole_image_rows_only']:.0%}"]
    (OUT / "audit_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def prefix_cache_potential(scorer, probes, ds, n: int) -> dict:
    """Share of the scoring forward passes' tokens that lie before each row's first masked position.

    Masking replaces tokens in place, so a row is identical to the unmasked prompt up to the first question token
    it masks or the first image token whose features it changes. Tokens before that point could come from a KV
    cache of the unmasked prompt instead of being recomputed. The 576-token column rescales the image span (at the
    same relative masking position) to LLaVA-1.5-7B's image, where the image dominates the sequence.
    """
    import torch

    from mbias.probes import SampleContext

    image_tokens = set()
    stats = {"rows": 0, "rows_image_whole": 0, "tokens": 0.0, "prefix": 0.0, "tokens_576": 0.0, "prefix_576": 0.0,
             "prefix_576_whole": 0.0}
    orig = scorer._forward_rows

    def counting(prepared, ids, feats, answers, rows, **kw):
        full = prepared.prompt_ids
        img_pos = prepared.image_positions
        n_img = int(img_pos.numel())
        image_tokens.add(n_img)
        grow = 576 - n_img
        for v, c in rows:
            length = full.numel() + int(answers[c].numel())
            diff = (ids[v] != full).nonzero()
            first = int(diff[0]) if len(diff) else full.numel()
            whole = True
            if feats is not None and n_img:
                changed = (feats[v].to(prepared.features.dtype) != prepared.features).any(-1).nonzero()
                if len(changed):
                    whole = False
                    first = min(first, int(img_pos[int(changed[0])]))
            # rescale to 576 image tokens: positions after the image shift by `grow`, positions inside it stretch
            start = int(img_pos[0]) if n_img else 0
            if n_img and first > start:
                inside = min(first - start, n_img)
                first_576 = start + round(inside * 576 / n_img) + max(0, first - start - n_img)
            else:
                first_576 = first
            stats["rows"] += 1
            stats["rows_image_whole"] += int(whole)
            stats["tokens"] += length
            stats["prefix"] += first
            stats["tokens_576"] += length + (grow if n_img else 0)
            stats["prefix_576"] += first_576
            stats["prefix_576_whole"] += first_576 if whole else 0
        return orig(prepared, ids, feats, answers, rows, **kw)

    scorer._forward_rows = counting
    try:
        with torch.no_grad():
            for i in range(n):
                ctx = SampleContext(scorer, scorer.prepare(ds[i]), swap_image=ds[(i + 1) % len(ds)].image)
                for probe in probes.values():
                    probe.run(ctx)
    finally:
        scorer._forward_rows = orig
    return {"samples": n, "rows": stats["rows"], "rows_image_whole": stats["rows_image_whole"] / stats["rows"],
            "image_tokens": max(image_tokens),
            "saving_this_model": stats["prefix"] / stats["tokens"],
            "saving_576_image_tokens": stats["prefix_576"] / stats["tokens_576"],
            "saving_576_whole_image_rows_only": stats["prefix_576_whole"] / stats["tokens_576"]}


if __name__ == "__main__":
    main()
