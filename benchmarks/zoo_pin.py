"""Choose the zoo builds that ship with mbias, by the rule declared in ``mbias.zoo.pinned.SELECTION_RULE``.

Builds every candidate (recipe x seed, one thread each, ``--jobs`` at a time), measures each one's behaviour
(counter-prior, balanced and in-distribution accuracy and cue-following with 95% intervals, 500 examples per
split), applies the rule, writes the candidates table, and with ``--write`` copies the chosen builds into
``mbias/zoo/pinned/`` with their build records and sha256 digests.

    python benchmarks/zoo_pin.py --jobs 2 --write

Writes benchmarks/results/zoo/pin.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "results" / "zoo"
SEEDS = {"shapes-p00": range(3), "shapes-p50": range(3), "shapes-p70": range(3), "shapes-p90": range(10),
         "shapes-p99": range(3)}
FILLERS = ("shapes-p90", "shapes-p99")  # recipes whose builds may fill an empty band of the ladder
THREADS = 1


def build_one(build: str) -> dict:
    """Train ``build`` into the cache (if not cached) and measure its behaviour; runs in a child process."""
    import torch

    from mbias.models import load_model
    from mbias.zoo import build_zoo_model
    from mbias.zoo.pinned import measure_behaviour

    path = build_zoo_model(build, progress=False)
    behaviour_file = path / "behaviour.json"
    if not behaviour_file.exists():
        scorer = load_model(str(path), device="cpu", dtype="float32")
        prior = build.split("-")[1].removeprefix("p")
        behaviour_file.write_text(json.dumps(measure_behaviour(scorer, prior), indent=2))
    info = json.loads((path / "zoo.json").read_text())
    return {"build": build, "path": str(path), "threads": info.get("threads", torch.get_num_threads()),
            "behaviour": json.loads(behaviour_file.read_text()), "record": info}


def _child(build: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    cmd = [sys.executable, __file__, "--one", build]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{build} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def select(candidates: dict[str, dict]) -> tuple[dict[str, str], dict[str, str]]:
    """(public name -> build, band -> build or '') by the declared rule."""
    from mbias.zoo.pinned import LADDER_BANDS, band_of

    cp = {b: c["behaviour"]["test-cp"] for b, c in candidates.items()}
    chosen = {}
    for recipe, seeds in SEEDS.items():
        builds = sorted((cp[f"{recipe}-seed{s}"]["accuracy"]["mean"], s) for s in seeds)
        chosen[recipe] = f"{recipe}-seed{builds[(len(builds) - 1) // 2][1]}"
    covered = {band_of(cp[b]["cue_following"]["mean"]) for b in chosen.values()}
    ladder = {}
    for lo, hi in LADDER_BANDS:
        band = band_of(lo)
        if band in covered:
            ladder[band] = next(b for b in chosen.values() if band_of(cp[b]["cue_following"]["mean"]) == band)
            continue
        inside = [(abs(cp[b]["cue_following"]["mean"] - (lo + hi) / 2), int(b.rsplit("seed", 1)[1]), b)
                  for b in candidates if b.rsplit("-seed", 1)[0] in FILLERS
                  and band_of(cp[b]["cue_following"]["mean"]) == band]
        ladder[band] = min(inside)[2] if inside else ""
    return chosen, ladder


def write_pinned(chosen: dict[str, str], ladder: dict[str, str], candidates: dict[str, dict], command: str) -> None:
    from mbias.zoo import zoo_entry
    from mbias.zoo.pinned import PINNED_DIR, RECORD, SELECTION_RULE, sha256

    builds = sorted(set(chosen.values()) | {b for b in ladder.values() if b})
    shutil.rmtree(PINNED_DIR, ignore_errors=True)
    PINNED_DIR.mkdir(parents=True)
    for build in builds:
        c = candidates[build]
        src, dst = Path(c["path"]), PINNED_DIR / build
        dst.mkdir()
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name not in ("zoo.json", "behaviour.json"):
                shutil.copy2(f, dst / f.name)
        recipe = build.rsplit("-seed", 1)[0]
        names = [n for n, b in chosen.items() if b == build]
        record = {"build": build, "public_names": names, "description": zoo_entry(build).description,
                  "build_record": c["record"], "behaviour": c["behaviour"],
                  "sha256": {f.name: sha256(f) for f in sorted(dst.iterdir())},
                  "selection": {"rule": SELECTION_RULE, "command": command,
                                "why": (f"median test-cp accuracy of {recipe}'s {len(SEEDS[recipe])} candidate builds"
                                        if names else "fills an empty band of the cue-following ladder: "
                                        + next(band for band, b in ladder.items() if b == build)),
                                "candidates_test_cp": {f"{recipe}-seed{s}": round(
                                    candidates[f"{recipe}-seed{s}"]["behaviour"]["test-cp"]["accuracy"]["mean"], 3)
                                    for s in SEEDS[recipe]}}}
        (dst / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    (PINNED_DIR / "index.json").write_text(json.dumps({"aliases": chosen}, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="builds at a time (each uses one thread)")
    ap.add_argument("--write", action="store_true", help="copy the chosen builds into mbias/zoo/pinned/")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(build_one(args.one)))
        return
    from mbias.provenance import provenance
    from mbias.zoo.pinned import SELECTION_RULE, band_of

    command = shlex.join(["python", str(Path(sys.argv[0]).resolve().relative_to(ROOT)), *sys.argv[1:]])
    t0 = time.perf_counter()
    order = sorted(SEEDS, key=lambda r: r != "shapes-p90")  # the demo's model first: the rest waits on it
    names = [f"{r}-seed{s}" for r in order for s in SEEDS[r]]
    with ThreadPoolExecutor(args.jobs) as pool:
        candidates = {c["build"]: c for c in pool.map(_child, names)}
    chosen, ladder = select(candidates)
    if args.write:
        write_pinned(chosen, ladder, candidates, command)
    prov = provenance(command=command, wall_seconds=round(time.perf_counter() - t0))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pin.json").write_text(json.dumps({"meta": prov, "rule": SELECTION_RULE, "chosen": chosen,
                                              "ladder": ladder, "candidates": {
                                                  b: {"behaviour": c["behaviour"], "threads": c["threads"],
                                                      "machine": c["record"].get("machine"),
                                                      "build_seconds": c["record"]["build_seconds"]}
                                                  for b, c in candidates.items()}}, indent=2))

    def stat(s, pct=False):
        k = 100 if pct else 1
        f = "{:.0f}" if pct else "{:.3f}"
        return f"{f.format(k * s['mean'])} [{f.format(k * s['ci95'][0])}, {f.format(k * s['ci95'][1])}]"

    lines = ["# Zoo builds: candidates and the pinned choice", "",
             f"- command: `{command}`", f"- commit: {prov['git_commit']}",
             f"- machine: {candidates[names[0]]['record'].get('machine')} (where the builds trained)",
             f"- versions: torch {prov['versions'].get('torch')}", f"- date: {prov['date']}; wall time "
             f"{prov['wall_seconds']} s", "",
             f"Rule: {SELECTION_RULE}", "",
             "| build | test-cp accuracy | follows cue on test-cp (%) | band | test-balanced accuracy | test-id accuracy "
             "| pinned as |", "|---|---|---|---|---|---|---|"]
    for b in names:
        be = candidates[b]["behaviour"]
        pinned = [n for n, x in chosen.items() if x == b] + [f"ladder {band}" for band, x in ladder.items()
                                                             if x == b and b not in chosen.values()]
        lines.append(f"| {b} | {stat(be['test-cp']['accuracy'])} | {stat(be['test-cp']['cue_following'], True)} | "
                     f"{band_of(be['test-cp']['cue_following']['mean'])} | {stat(be['test-balanced']['accuracy'])} | "
                     f"{stat(be['test-id']['accuracy'])} | {', '.join(pinned)} |")
    lines += ["", "Ladder: " + "; ".join(f"{band}: {b or 'empty'}" for band, b in ladder.items())]
    (OUT / "pin.md").write_text("\n".join(lines) + "\n")
    print((OUT / "pin.md").read_text())


if __name__ == "__main__":
    main()
