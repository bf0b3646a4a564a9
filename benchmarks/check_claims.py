"""Check the numbers the docs quote against the results files they come from.

A number in prose that comes from a results file carries a tag right after it, an HTML comment (invisible once
rendered):

    **+18.2 [+8.9, +28.7]**<!-- claim: learning-speed/legacy-replication-builds-16-25.json#rows.miles.test-cp vs plain | points -->

- ``FILE``: a JSON file under benchmarks/results/ (or a path from the repository root); several joined with ``+``
  give one list (``a.json+b.json#rows.plain.test-cp.per_run``: the per-build values of both runs).
- ``PATH``: keys separated by dots; a key may hold spaces, slashes or dots (the longest key that exists wins); an
  integer indexes a list, ``key=value`` picks the list element whose ``key`` is ``value``.
  ``derived:NAME ARG, ...`` instead of ``FILE#PATH`` names a value computed from several results (``DERIVED``
  below: ``derived:good_runs_gain miles, learning-speed/legacy-replication-builds-16-25.json``).
- several sources separated by ``;`` must each give the prose value ("each above plain on 9 of 10 builds").
- after ``|``, in order: ``points`` or ``percent`` (x100), ``neg`` (x-1, so "cuts by 0.15 [0.09, 0.22]" reads a
  difference of -0.15 [-0.22, -0.09]), and for a list ``min``, ``max``, ``mean`` or ``count>0`` / ``count<0.30``
  (any comparison: "K of N" in the prose).

The prose value is what stands right before the tag (closing ``*``, ``_`` or backquotes in between are skipped):
a number (``+18.2``, ``0.476``, ``58%``, ``1.03x``), a number with an interval (``+18.2 [+8.9, +28.7]``, also
``+22.5 points [+5.5, +33.6]``) or ``K of N`` / ``K of the N``. The results value is rounded to as many decimals
as the prose shows, with the prose's sign convention (an explicit ``+`` must be there), and must read the same; a
mean with an interval in the results may be quoted alone. A tag whose file or key does not exist, or with no
number before it, is an error too.

    python benchmarks/check_claims.py            # README.md, docs/recipes.md, docs/methods.md, docs/scaling.md, benchmarks/README.md
    python benchmarks/check_claims.py --list     # print every checked claim with its source and value
    python benchmarks/check_claims.py FILE.md    # check other files

Exit status 1 when any claim disagrees, naming file:line, the prose value and the results value.
"""

from __future__ import annotations

import argparse
import json
import operator
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ("README.md", "docs/recipes.md", "docs/methods.md", "docs/scaling.md", "benchmarks/README.md")

TAG = re.compile(r"<!--\s*claim:\s*(?P<body>.*?)\s*-->", re.S)
NUM = r"[+\-\u2212]?\d+(?:\.\d+)?"
# what may stand right before a tag, read backwards from it
PROSE = [
    ("interval", re.compile(rf"(?P<mean>{NUM})(?P<unit>%|x)?(?:\s+points)?\s*\[(?P<lo>{NUM}),\s*(?P<hi>{NUM})\]"
                            r"[*_`]*$")),
    ("count", re.compile(r"(?P<k>\d+)\s+of\s+(?:the\s+)?(?P<n>\d+)[*_`]*$")),
    ("number", re.compile(rf"(?P<mean>{NUM})(?P<unit>%|x)?(?:\s+points)?[*_`]*$")),
]
COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}


class ClaimError(Exception):
    pass


@dataclass
class Claim:
    doc: str
    line: int
    source: str
    prose: str
    kind: str
    numbers: dict  # prose part -> the prose's own text of it (mean, lo, hi or k, n)
    start: int  # offset of the prose value in the document
    end: int


def find_claims(text: str, doc: str) -> list[Claim]:
    """Every tag in ``text`` with the prose value right before it."""
    claims = []
    for m in TAG.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[max(0, m.start() - 300):m.start()]
        before = before.rsplit("-->", 1)[-1]  # after an earlier tag, read only what follows it
        for kind, pattern in PROSE:
            p = pattern.search(before)
            if p:
                numbers = {k: v for k, v in p.groupdict().items() if k in ("mean", "lo", "hi", "k", "n")}
                start = m.start() - (len(before) - p.start())
                claims.append(Claim(doc, line, " ".join(m.group("body").split()), p.group(0).rstrip("*_`"), kind,
                                    numbers, start, m.start()))
                break
        else:
            claims.append(Claim(doc, line, " ".join(m.group("body").split()), "", "none", {}, m.start(), m.start()))
    return claims


# ----------------------------------------------------------------------------------------------- results values


def _load(name: str, results: Path):
    path = results / name  # a suite's folder (zoo/pin.json), else a path from the repository root
    if not path.is_file() and "/" in name:
        path = ROOT / name
    if not path.is_file():
        raise ClaimError(f"results file {name} not found ({path})")
    return json.loads(path.read_text())


def resolve(obj, path: str):
    """Follow a dotted path whose keys may themselves contain dots or spaces (the longest existing key wins)."""
    parts = [p for p in path.split(".")] if path else []
    i = 0
    while i < len(parts):
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j]).strip()
            if isinstance(obj, dict) and key in obj:
                obj, i = obj[key], j
                break
            if isinstance(obj, list):
                if re.fullmatch(r"-?\d+", key) and -len(obj) <= int(key) < len(obj):
                    obj, i = obj[int(key)], j
                    break
                if "=" in key:
                    field, value = (s.strip() for s in key.split("=", 1))
                    hits = [e for e in obj if isinstance(e, dict) and str(e.get(field)) == value]
                    if len(hits) == 1:
                        obj, i = hits[0], j
                        break
        else:
            where = ".".join(parts[:i]) or "the top level"
            keys = list(obj)[:12] if isinstance(obj, dict) else f"a list of {len(obj)}" if isinstance(obj, list) \
                else repr(obj)
            raise ClaimError(f"no key {'.'.join(parts[i:])!r} under {where} (there: {keys})")
    return obj


def _per_run(results: Path, name: str, arm: str, metric: str) -> list[float]:
    return resolve(_load(name, results), f"rows.{arm}.{metric}.per_run")


FULL_TRAINING = ("learning-speed/legacy-16-builds.json", "learning-speed/legacy-replication-builds-16-25.json")  # plain / miles / mnl, 26 builds


def _plain_runs(results: Path, *files: str) -> int:
    """How many plain runs (default: the 26 of the full-training runs) reach 0.55 or more on test-cp."""
    return sum(p >= 0.55 for name in files or FULL_TRAINING for p in _per_run(results, name, "plain", "test-cp"))


def _good_runs_gain(results: Path, arm: str, *files: str) -> float:
    """Mean test-cp difference arm - plain over the runs where plain reached 0.55 or more (did not collapse)."""
    diffs = []
    for name in files or FULL_TRAINING:
        plain = _per_run(results, name, "plain", "test-cp")
        gain = _per_run(results, name, arm, "test-cp vs plain")
        diffs += [g for p, g in zip(plain, gain, strict=True) if p >= 0.55]
    return sum(diffs) / len(diffs)


def _below_untrained(results: Path, *files: str) -> dict:
    """Runs where plain training ends below its own untrained build on test-cp, "K of N"."""
    k = n = 0
    for name in files or FULL_TRAINING:
        plain = _per_run(results, name, "plain", "test-cp")
        before = _per_run(results, name, "before training", "test-cp")
        k += sum(p < b for p, b in zip(plain, before, strict=True))
        n += len(plain)
    return {"k": k, "n": n}


def _share_of_gain(results: Path, arm: str, reference: str, file: str = "recipes/compare.json") -> float:
    """``arm``'s test-cp gain over LoRA as a share of ``reference``'s (rows of ``file``; a row name or the start of
    one)."""
    rows = _load(file, results)["rows"]
    ref = [k for k in rows if k == reference] or [k for k in rows if k.startswith(reference)]
    if len(ref) != 1 or arm not in rows:
        raise ClaimError(f"share_of_gain: no single row {arm!r} / {reference!r} in {file}")
    return rows[arm]["test-cp vs lora"]["mean"] / rows[ref[0]]["test-cp vs lora"]["mean"]


# derived:NAME ARG, ARG -> NAME(results, ARG, ARG): values the prose computes from several results
DERIVED = {
    "plain_runs_above_0.55": _plain_runs,
    "good_runs_gain": _good_runs_gain,
    "below_untrained": _below_untrained,
    "share_of_gain": _share_of_gain,
}


def source_value(source: str, results: Path):
    """(value, modifiers) of a tag body: value a number, ``{"mean", "ci95"}`` or ``{"k", "n"}``."""
    where, _, mods = source.partition("|")
    where, mods = where.strip(), mods.split()
    if where.startswith("derived:"):
        name, _, args = where.removeprefix("derived:").strip().partition(" ")
        if name not in DERIVED:
            raise ClaimError(f"no derived value {name!r} (there: {', '.join(DERIVED)})")
        value = DERIVED[name](results, *[a.strip() for a in args.split(",") if a.strip()])
    else:
        files, sep, path = where.partition("#")
        if not sep:
            raise ClaimError(f"a claim is FILE#PATH or derived:NAME, got {where!r}")
        parts = [resolve(_load(f.strip(), results), path.strip()) for f in files.split("+")]
        value = parts[0] if len(parts) == 1 else [v for p in parts for v in p]
    scale = 1.0
    for mod in mods:
        if mod in ("points", "percent"):
            scale *= 100
        elif mod == "neg":
            scale *= -1
        elif mod in ("min", "max", "mean"):
            value = {"min": min, "max": max, "mean": lambda v: sum(v) / len(v)}[mod](_numbers(value, mod))
        elif mod.startswith("count"):
            m = re.fullmatch(r"count(<=|>=|==|<|>)(-?\d+(?:\.\d+)?)", mod)
            if not m:
                raise ClaimError(f"cannot read {mod!r}: count<X, count>=X, ...")
            vals = _numbers(value, mod)
            value = {"k": sum(COMPARE[m.group(1)](v, float(m.group(2))) for v in vals), "n": len(vals)}
        else:
            raise ClaimError(f"unknown modifier {mod!r} (points, percent, neg, min, max, mean, count<X)")
    return _scaled(value, scale)


def _numbers(value, mod: str) -> list[float]:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) for v in value):
        raise ClaimError(f"{mod} needs a list of numbers, the path gives {type(value).__name__}")
    return value


def _scaled(value, scale: float):
    if isinstance(value, dict) and "k" in value:
        return value
    if isinstance(value, dict) and "mean" in value:
        lo, hi = (None, None) if value.get("ci95") is None else (v * scale for v in value["ci95"])
        lo, hi = (hi, lo) if scale < 0 else (lo, hi)
        return {"mean": value["mean"] * scale, "ci95": [lo, hi]}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value * scale
    raise ClaimError(f"the path ends at {type(value).__name__}, not a number, an interval or a count")


# ------------------------------------------------------------------------------------------------- comparison


def as_prose(value: float, like: str) -> str:
    """``value`` written the way ``like`` is: as many decimals, '+' if it shows one."""
    like = like.replace("\u2212", "-")
    decimals = len(like.split(".")[1]) if "." in like else 0
    text = f"{value:+.{decimals}f}" if like.startswith("+") else f"{value:.{decimals}f}"
    if float(text) == 0:  # -0.0 and +0.0 read as 0 in any convention
        return like if float(like) == 0 else text
    return text


def check(claim: Claim, results: Path) -> str | None:
    """None when the prose agrees with its source (with every source, when ``;`` separates several), else why
    not."""
    if claim.kind == "none":
        return "no number right before the tag"
    problems = [p for p in (_check_one(claim, source.strip(), results) for source in claim.source.split(";")) if p]
    return "; ".join(problems) or None


def _check_one(claim: Claim, source: str, results: Path) -> str | None:
    try:
        value = source_value(source, results)
    except ClaimError as e:
        return str(e)
    if claim.kind == "count":
        if not isinstance(value, dict) or "k" not in value:
            return f"the prose says '{claim.prose}' (K of N) but the source gives {value!r}"
        ours = (int(claim.numbers["k"]), int(claim.numbers["n"]))
        theirs = (value["k"], value["n"])
        return None if ours == theirs else f"prose {ours[0]} of {ours[1]}, results {theirs[0]} of {theirs[1]}"
    if isinstance(value, dict) and "k" in value:
        return f"the source is a count ({value['k']} of {value['n']}); write it as 'K of N'"
    mean = value["mean"] if isinstance(value, dict) else value
    pairs = [(claim.numbers["mean"], mean)]
    if claim.kind == "interval":
        if not isinstance(value, dict) or value["ci95"][0] is None:
            return f"the prose has an interval but the source gives {value!r}"
        pairs += [(claim.numbers["lo"], value["ci95"][0]), (claim.numbers["hi"], value["ci95"][1])]
    wrong = [(p, as_prose(v, p)) for p, v in pairs if as_prose(v, p) != p.replace("\u2212", "-")]
    return None if not wrong else f"prose '{claim.prose}', results '{_written(pairs)}'"


def _written(pairs) -> str:
    mean = as_prose(pairs[0][1], pairs[0][0])
    if len(pairs) == 3:
        return f"{mean} [{as_prose(pairs[1][1], pairs[1][0])}, {as_prose(pairs[2][1], pairs[2][0])}]"
    return mean


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("docs", nargs="*", help=f"Markdown files (default: {', '.join(DOCS)})")
    ap.add_argument("--list", action="store_true", help="print every checked claim, its source and its value")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the results folder FILE names are read from")
    args = ap.parse_args(argv)
    docs = [Path(d) for d in args.docs] or [ROOT / d for d in DOCS]
    failures = n = 0
    for doc in docs:
        shown = doc.resolve().relative_to(ROOT) if doc.resolve().is_relative_to(ROOT) else doc
        for claim in find_claims(doc.read_text(), str(shown)):
            n += 1
            problem = check(claim, args.results)
            if args.list:
                status = "ok" if problem is None else "WRONG"
                print(f"{claim.doc}:{claim.line}: {status:5} {claim.prose!r:32} <- {claim.source}")
            if problem is not None:
                failures += 1
                print(f"{claim.doc}:{claim.line}: {problem}  [{claim.source}]", file=sys.stderr)
    print(f"{n} claims checked, {failures} wrong", file=sys.stderr if failures else sys.stdout)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
