"""Where a result came from: versions, code commit, OS and CUDA stack, model revision, date. Recorded with every
output; ``results_header`` is the same for the top of a benchmark's results file."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from mbias.env import package_versions, system_info


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state() -> dict:
    """``{"commit", "dirty", "modified", "root"}`` of the mbias checkout in use (editable installs; all None
    otherwise): ``modified`` lists the tracked files that differ from the commit, untracked files left out."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "modified": None, "root": None}
    status = _git("status", "--porcelain", "--untracked-files=no") or ""
    modified = sorted(line[3:] for line in status.splitlines() if line.strip())
    return {"commit": commit.strip(), "dirty": bool(modified), "modified": modified,
            "root": (_git("rev-parse", "--show-toplevel") or "").strip() or None}


def git_commit() -> str | None:
    """The commit of the mbias checkout in use, if it is one (editable installs), with "+dirty" when tracked files
    differ from it."""
    state = git_state()
    return None if state["commit"] is None else state["commit"] + ("+dirty" if state["dirty"] else "")


def provenance(**extra) -> dict:
    versions = package_versions()
    return {
        "mbias_version": versions.get("mbias"),
        "git_commit": git_commit(),
        "versions": {k: v for k, v in versions.items() if k != "mbias"},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "system": system_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def machine_info() -> dict:
    """Cores this process may use, the CPU model (/proc/cpuinfo), architecture, OS, and GPU names from
    nvidia-smi when there is one. No torch import: a results header should not cost seconds."""
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10)
            gpus = [g.strip() for g in out.stdout.splitlines() if g.strip()] if out.returncode == 0 else []
        except (OSError, subprocess.SubprocessError):
            pass
    return {"cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_model": cpu_model or platform.processor() or None, "arch": platform.machine(),
            "os": platform.platform(), "gpus": gpus}


def command_line(argv: list[str] | None = None, root: str | Path | None = None) -> str:
    """``python SCRIPT ARGS`` as run: shlex.join of ``argv`` (default sys.argv), the script path made relative to
    the repository root (``root``, default the mbias checkout's) when it lies inside it."""
    argv = list(sys.argv if argv is None else argv)
    root = root or git_state()["root"]
    script = Path(argv[0]).resolve() if argv else None
    if script is not None and root and script.is_relative_to(Path(root).resolve()):
        argv[0] = script.relative_to(Path(root).resolve()).as_posix()
    return shlex.join(["python", *argv])


def results_header(argv: list[str] | None = None, *, wall_seconds: float | None = None) -> tuple[list[str], dict]:
    """The provenance block every benchmark results file starts with: (Markdown lines, the same as a dict for the
    JSON's ``provenance`` field).

    Records the exact command line (``command_line(argv)``), the git commit and whether tracked files differed
    from it (and which), the machine (``machine_info``), the torch / transformers / peft / numpy / mbias versions
    and Python's, the date (UTC) and the wall time the caller measured (``wall_seconds``)."""
    git = git_state()
    versions = package_versions()
    info = {
        "command": command_line(argv, git["root"]),
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "git_modified": git["modified"],
        "machine": machine_info(),
        "versions": {"python": platform.python_version(),
                     **{k: versions.get(k) for k in ("torch", "transformers", "peft", "numpy", "mbias")}},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": None if wall_seconds is None else round(float(wall_seconds), 1),
    }
    m = info["machine"]
    if git["commit"] is None:
        commit = "not a git checkout"
    elif git["dirty"]:
        shown = ", ".join(git["modified"][:8]) + (f", ... ({len(git['modified'])} in all)"
                                                  if len(git["modified"]) > 8 else "")
        commit = f"`{git['commit']}`, tree dirty (tracked files modified: {shown})"
    else:
        commit = f"`{git['commit']}`, tree clean"
    machine = f"{m['cores']} cores, {m['cpu_model'] or 'CPU model unknown'}, {m['arch']}, {m['os']}"
    if m["gpus"]:
        machine += ", GPU: " + ", ".join(m["gpus"])
    lines = [
        f"- command: `{info['command']}`",
        f"- commit: {commit}",
        f"- machine: {machine}",
        "- versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in info["versions"].items()),
        f"- date: {info['date']}" + ("" if wall_seconds is None else f"; wall time {info['wall_seconds']:.1f} s"),
    ]
    return lines, info
