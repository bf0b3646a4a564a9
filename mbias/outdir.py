"""The output folder of a run, checked before any work: a run that would only fail at its first write (after
loading a model and data, or hours of training) fails at once instead, and leaves nothing behind. One run at a
time writes into a folder (``out_dir_lock``); docs/interruptions.md says what a second run into it does."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
import time
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


LOCK = ".mbias.lock"


@contextlib.contextmanager
def out_dir_lock(out: str | Path, command: str):
    """Hold ``out``'s lock while a run writes there; a second run into the same folder is refused at once, in one
    line naming the first (its command, process id, host and start time), before it loads anything.

    The lock is ``fcntl.flock`` on ``out/.mbias.lock``, as the zoo's builds lock theirs: the kernel drops it when
    the holder ends in any way (``kill -9`` included), so a dead run never leaves the folder locked. The file
    itself stays (removing a lock file races with a process opening it), except in a folder this call created
    and the run left empty (a run refused later, e.g. for bad data, leaves nothing behind)."""
    import fcntl

    path = check_out_dir(out)
    created = _first_missing(path.absolute())
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{path} is in use by {_holder(fd)}; wait for it to end (the same command then "
                              "resumes or reuses its results), or pass another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        yield path
    finally:
        if created is not None and [p.name for p in path.iterdir()] == [LOCK]:
            (path / LOCK).unlink()
            for folder in (path.absolute(), *path.absolute().parents):
                folder.rmdir()
                if folder == created:
                    break
        os.close(fd)  # releases the lock


def exclusive_out_dir(command: str):
    """Decorator for a ``run(..., out, ...)`` function: the call holds ``out_dir_lock(out, command)`` (no lock
    when ``out`` is None: nothing is written). Under
    ``accelerate launch`` the first process holds it for all of them (the others write into the folder too)."""
    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            out = signature.bind(*args, **kwargs).arguments.get("out")
            if out is None or int(os.environ.get("RANK", "0")) != 0:
                return fn(*args, **kwargs)
            with out_dir_lock(out, command):
                return fn(*args, **kwargs)
        return run
    return wrap


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet, or None."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return (f"another mbias {info['command']} (pid {info['pid']} on {info['host']}, started "
                f"{info['started']})")
    except (OSError, ValueError, KeyError):
        return "another mbias run"
