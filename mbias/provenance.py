"""Where a result came from: versions, code commit, OS and CUDA stack, model revision, date. Recorded with every
output."""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path

from mbias.env import package_versions, system_info


def git_commit() -> str | None:
    """The commit of the mbias checkout in use, if it is one (editable installs)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                           text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


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
