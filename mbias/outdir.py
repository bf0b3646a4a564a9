"""The output folder of a run, checked before any work: a run that would only fail at its first write (after
loading a model and data, or hours of training) fails at once instead, and leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

from mbias.errors import ConfigError


def check_out_dir(out: str | Path) -> Path:
    """``out`` as a Path if it is a writable folder or can be created as one; ConfigError naming it otherwise.

    Nothing is created here: the run makes the folder when it first writes, so a run refused later (bad data, an
    unknown model) does not leave an empty output folder behind."""
    path = Path(out).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"output folder {path} is a file; pass a folder path with --out (a new one, or this "
                              "command's earlier output)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"output folder {path} is not writable; pass another --out or make it writable")
        return path
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot create output folder {path}: {parent} is a file; pass another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create output folder {path}: {parent} is not writable; pass another --out")
    return path
