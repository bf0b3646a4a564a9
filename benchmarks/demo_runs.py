"""The demo's story, on one and two threads: does `mbias demo` say the same thing whatever the thread count?

Runs ``mbias demo`` as a user does (a fresh ``MBIAS_CACHE``, a fresh output folder) once per ``OMP_NUM_THREADS``
value, one after the other, and records its wall time, the headline it prints and its ``compare.json`` (every
measure before and after on the same samples, paired differences with 95% intervals, both verdicts). The
fine-tune's float rounding differs between thread counts, so the numbers may differ a little; the story (the
counter-prior accuracy up and the wording-following down, each with an interval excluding 0, a verdict after
that is not worse) must not.

    python benchmarks/demo_runs.py [--threads 1,2]

Writes benchmarks/results/demo/demo.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "demo"
KEYS = ("correct", "follows_text", "language_share")


def run(threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MBIAS_CACHE": str(Path(tmp) / "cache")}
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mbias", "demo", "--out", str(Path(tmp) / "demo"),
                               "--no-progress"], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"mbias demo failed with {threads} thread(s):\n{done.stderr[-3000:]}")
        compare = json.loads((Path(tmp) / "demo" / "compare.json").read_text())
    lines = [x for x in done.stdout.splitlines() if x.strip()]
    return {"threads": threads, "seconds": round(seconds, 1), "stdout": lines, "compare": compare}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="OMP_NUM_THREADS values, one demo each")
    args = ap.parse_args()
    from mbias.provenance import results_header

    t0 = time.perf_counter()
    runs = [run(int(t)) for t in args.threads.split(",")]
    header, meta = results_header(wall_seconds=time.perf_counter() - t0)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = {}
    for r in runs:
        measures = {m["key"]: m for m in r["compare"]["measures"] if m["probe"] in (None, "conflict", "modality_shapley")
                    and m["key"] in KEYS}
        rows[str(r["threads"])] = {
            "seconds": r["seconds"], "verdict_change": r["compare"]["verdict_change"],
            **{k: {"before": m["before"]["mean"], "after": m["after"]["mean"], "difference": m["difference"]["mean"],
                   "ci95": m["difference"]["ci95"], "judgement": m["judgement"],
                   "population": m["population"]["description"]} for k, m in measures.items()}}
    (OUT / "demo.json").write_text(json.dumps({"provenance": meta, "rows": rows, "runs": runs}, indent=2))

    lines = ["# `mbias demo` on one and two threads", "", *header, "",
             "Each run: a fresh zoo cache and output folder, `OMP_NUM_THREADS` as given, `mbias demo --no-progress` "
             "(wall time includes starting Python and importing torch). Paired differences after - before on the "
             "same samples (compare.json), 95% intervals.", "",
             "| threads | seconds | accuracy (test-cp) | follows the wording | language share | verdict |",
             "|---|---|---|---|---|---|"]

    def cell(row, key, pct):
        m = row[key]
        k = 100 if pct else 1
        f = "{:+.0f}" if pct else "{:+.2f}"
        return (f"{k * m['before']:.{0 if pct else 2}f} -> {k * m['after']:.{0 if pct else 2}f} "
                f"({f.format(k * m['difference'])} [{f.format(k * m['ci95'][0])}, {f.format(k * m['ci95'][1])}], "
                f"{m['judgement']})")

    for t, row in rows.items():
        lines.append(f"| {t} | {row['seconds']} | {cell(row, 'correct', False)} | {cell(row, 'follows_text', True)} | "
                     f"{cell(row, 'language_share', False)} | {row['verdict_change']['text']} |")
    lines += ["", "Following the wording is read on "
              f"{next(iter(rows.values()))['follows_text']['population']}.", "", "What the demo printed:", ""]
    for r in runs:
        lines += [f"{r['threads']} thread(s):", "", "```", *r["stdout"], "```", ""]
    (OUT / "demo.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
