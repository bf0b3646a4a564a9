"""Pinned zoo builds: the weights that ship with mbias, so ``zoo:NAME`` is the same model on every machine.

Training a zoo model is deterministic on one machine but not across machines: whether the tiny ViT learns to see
an attribute before the wording cue is learned for it is a race that float rounding (CPU, thread count) decides,
so the same recipe gives ``shapes-p90`` a counter-prior accuracy anywhere from 0.00 to 0.75
(``benchmarks/results/zoo_spread.md``). Every zoo-based number mbias reports is therefore measured on these
shipped builds, each with its build record (training config, seed, threads, machine, torch version), the sha256
of its files (checked on every load) and its measured behaviour (``measure_behaviour``), so ``mbias zoo list`` says
what a model does rather than its name promising it. ``benchmarks/zoo_pin.py`` chose and wrote them, by the rule
in ``SELECTION_RULE`` (declared before the candidates were built).

Layout: ``pinned/index.json`` maps the public names to builds (``"shapes-p90": "shapes-p90-seed3"``); each build
is a ``save_pretrained`` folder ``pinned/BUILD/`` with ``pinned.json``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from mbias.errors import ModelLoadError

PINNED_DIR = Path(__file__).parent / "pinned"
RECORD = "pinned.json"

# cue-following on test-cp (the share of answers that are the wording's answer, always wrong there): the ladder
# the verdict's severity bands are checked on has a pinned model in each of these
LADDER_BANDS = ((0.0, 0.10), (0.10, 0.30), (0.30, 0.60), (0.60, 0.90), (0.90, 1.0))
BEHAVIOUR_SPLITS = ("test-cp", "test-balanced", "test-id")
BEHAVIOUR_N = 500

SELECTION_RULE = (
    "Declared before building (benchmarks/zoo_pin.py): candidates are builds of each recipe with training seeds "
    "0-9 for shapes-p90 (whose planted bias varies most between builds) and 0-2 for the others, one thread each. "
    "The public name pins the candidate with the median counter-prior (test-cp) accuracy (the lower median for an "
    "even count, ties to the lower seed): a pinned model is typical of its recipe. Then, for each band of "
    "cue-following on test-cp (under 10%, 10-30%, 30-60%, 60-90%, over 90%) that no public name covers, the "
    "shapes-p90 or shapes-p99 candidate in that band closest to the band's centre is pinned under its build "
    "name (NAME-seedN); if none is in the band, the band stays empty and the ladder table says so.")


def band_of(rate: float) -> str:
    """The ladder band a cue-following rate falls in, as text (``10-30%``)."""
    for lo, hi in LADDER_BANDS:
        if lo <= rate < hi or (hi == 1.0 and rate == 1.0):
            return f"{round(100 * lo)}-{round(100 * hi)}%"
    raise ValueError(rate)


@functools.cache
def _index(root: Path) -> dict[str, str]:
    path = root / "index.json"
    return json.loads(path.read_text())["aliases"] if path.exists() else {}


def pinned_builds(root: Path | None = None) -> dict[str, str]:
    """``{public name: build name}`` of the shipped builds (a build is also reachable by its own name)."""
    root = root or PINNED_DIR
    aliases = dict(_index(root))
    for folder in sorted(root.glob(f"*/{RECORD}")) if root.exists() else ():
        aliases.setdefault(folder.parent.name, folder.parent.name)
    return aliases


def pinned_record(build: str, root: Path | None = None) -> dict:
    return json.loads(((root or PINNED_DIR) / build / RECORD).read_text())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_folder(name: str, root: Path | None = None) -> Path | None:
    """The shipped folder of ``zoo:name`` after checking every file against its recorded sha256, or None when
    ``name`` is not pinned. A file that does not match is refused: the model would not be the one whose
    behaviour mbias documents."""
    root = root or PINNED_DIR
    build = pinned_builds(root).get(name)
    if build is None:
        return None
    folder = root / build
    record = pinned_record(build, root)
    for file, digest in record["sha256"].items():
        path = folder / file
        if not path.exists():
            raise ModelLoadError(f"zoo:{name}: the shipped file {path} is missing; reinstall mbias "
                                 "(pip install --force-reinstall mbias), or train it here with "
                                 f"`mbias zoo build {name} --rebuild` and pass that folder")
        if sha256(path) != digest:
            raise ModelLoadError(f"zoo:{name}: {path} does not match its recorded sha256 ({digest[:12]}...): the "
                                 "file was changed or damaged, so it is not the model whose behaviour mbias documents. "
                                 "Reinstall mbias (pip install --force-reinstall mbias), or train it here with "
                                 f"`mbias zoo build {name} --rebuild` and pass that folder")
    return folder


def measure_behaviour(scorer, prior_key: str, *, n: int | None = None, progress: bool = False) -> dict:
    """Counter-prior, balanced and in-distribution accuracy and cue-following, with 95% intervals.

    test-cp and test-balanced come from ``synth:shapes-p90`` for every model (the splits the verdict benchmark
    audits, so the ladder is read on one population; their wording is tied to the same answers at every prior),
    test-id from the model's own training prior."""
    from mbias.stats import bootstrap_mean
    from mbias.synth import load_synth
    from mbias.zoo.train import answers

    n = n or BEHAVIOUR_N
    out = {}
    for split in BEHAVIOUR_SPLITS:
        data = load_synth(f"shapes-p{prior_key if split == 'test-id' else '90'}/{split}")
        rows = answers(scorer, [data[i] for i in range(min(n, len(data)))], progress)
        out[split] = {"n": len(rows),
                      "accuracy": bootstrap_mean([r["correct"] for r in rows]),
                      "cue_following": bootstrap_mean([r["follows_cue"] for r in rows])}
    return out


def behaviour_line(behaviour: dict) -> str:
    """``test-cp 0.43 [0.39, 0.47], follows cue 51% [47, 55] (30-60%)`` for zoo list."""
    cp = behaviour["test-cp"]
    acc, cue = cp["accuracy"], cp["cue_following"]
    return (f"test-cp {acc['mean']:.2f} [{acc['ci95'][0]:.2f}, {acc['ci95'][1]:.2f}], follows the cue on "
            f"{100 * cue['mean']:.0f}% [{100 * cue['ci95'][0]:.0f}, {100 * cue['ci95'][1]:.0f}]; test-balanced "
            f"follows it on {100 * behaviour['test-balanced']['cue_following']['mean']:.0f}%")
