"""benchmarks/check_claims.py: the docs' tagged numbers agree with the results files, and a one-digit change to any
of them is caught, naming the line."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "check_claims.py"


@pytest.fixture(scope="module")
def cc():
    spec = importlib.util.spec_from_file_location("check_claims", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_claims"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _one_digit_off(number: str) -> str:
    """The same number with its last digit changed by one."""
    i = max(k for k, ch in enumerate(number) if ch.isdigit())
    return number[:i] + str((int(number[i]) + 1) % 10) + number[i + 1:]


def test_the_repository_passes():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    n = int(re.search(r"(\d+) claims checked, 0 wrong", out.stdout).group(1))
    assert n >= 60  # README, benchmarks/README.md and docs/recipes.md carry tags
    listed = subprocess.run([sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, cwd=ROOT)
    assert listed.returncode == 0 and len([ln for ln in listed.stdout.splitlines() if ": ok " in ln]) == n


def test_a_one_digit_change_in_readme_fails_naming_the_line(tmp_path, cc):
    text = (ROOT / "README.md").read_text()
    claims = cc.find_claims(text, "README.md")
    assert len(claims) >= 20
    claim = next(c for c in claims if c.kind == "interval")
    number = claim.numbers["mean"]
    prose = text[claim.start:claim.end]
    changed = text[:claim.start] + prose.replace(number, _one_digit_off(number), 1) + text[claim.end:]
    copy = tmp_path / "README.md"
    copy.write_text(changed)
    out = subprocess.run([sys.executable, str(SCRIPT), str(copy)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1
    assert f"README.md:{claim.line}:" in out.stderr and f"'{_one_digit_off(number)}" in out.stderr, out.stderr
    assert "1 wrong" in out.stderr


def test_every_checked_number_in_readme_is_really_checked(cc):
    """Each number of each claim (a mean, an interval's ends, K and N), changed by one digit, makes that claim
    fail: no tag passes whatever the prose says."""
    text = (ROOT / "README.md").read_text()
    for claim in cc.find_claims(text, "README.md"):
        assert cc.check(claim, cc.RESULTS) is None, (claim.line, claim.prose)
        for part, number in claim.numbers.items():
            if number is None:
                continue
            mutated = cc.Claim(**{**vars(claim), "numbers": {**claim.numbers, part: _one_digit_off(number)}})
            mutated.prose = claim.prose.replace(number, _one_digit_off(number))
            assert cc.check(mutated, cc.RESULTS), (claim.line, part, number)


def test_bad_tags_are_errors(tmp_path, cc):
    doc = tmp_path / "doc.md"
    doc.write_text("a +18.2<!-- claim: learning-speed/legacy-replication-builds-16-25.json#rows.miles.test-cp vs plain | points --> gain\n"
                   "b +18.2<!-- claim: no_such_file.json#rows.miles | points -->\n"
                   "c +18.2<!-- claim: learning-speed/legacy-replication-builds-16-25.json#rows.nobody.test-cp | points -->\n"
                   "d words only<!-- claim: learning-speed/legacy-replication-builds-16-25.json#rows.miles.test-cp vs plain -->\n"
                   "e 9 of 10<!-- claim: learning-speed/legacy-replication-builds-16-25.json#rows.miles.test-cp vs plain.per_run | count>0 -->\n"
                   "f 0.18<!-- claim: learning-speed/legacy-replication-builds-16-25.json#rows.miles.test-cp vs plain -->\n")
    out = subprocess.run([sys.executable, str(SCRIPT), str(doc)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1
    assert "doc.md:2: results file no_such_file.json not found" in out.stderr
    assert "doc.md:3: no key 'nobody.test-cp'" in out.stderr
    assert "doc.md:4: no number right before the tag" in out.stderr
    assert "3 wrong" in out.stderr  # lines 1, 5 and 6 agree with the results


def test_prose_formats(cc):
    assert cc.as_prose(0.1820, "+18.2") == "+0.2" and cc.as_prose(18.2, "+18.2") == "+18.2"
    assert cc.as_prose(-0.004, "+0.0") == "+0.0"  # a zero keeps the prose's sign
    assert cc.as_prose(1.277, "1.28") == "1.28" and cc.as_prose(72.4, "72") == "72"
    claims = cc.find_claims("gains **+22.5 points\n  [+5.5, +33.6]**<!-- claim: x.json#a -->; 7 of the 26<!-- claim:"
                            " y.json#b --> and 58%<!-- claim: z.json#c | percent -->", "t.md")
    assert [(c.kind, c.line) for c in claims] == [("interval", 2), ("count", 2), ("number", 2)]
    assert claims[0].numbers == {"mean": "+22.5", "lo": "+5.5", "hi": "+33.6"}
    assert claims[1].numbers == {"k": "7", "n": "26"} and claims[2].numbers["mean"] == "58"
