"""Model references: what ``--model`` / ``mbias.audit(model)`` / ``load_model`` accept, resolved to a local
folder or a hub id.

- ``SCHEME:NAME`` for a scheme in ``SCHEMES``: ``zoo:NAME`` is a zoo build (``mbias.zoo``; the shipped build
  when the name is pinned, else the cached one, trained first if needed);
- a local folder holding a saved model (``config.json``);
- a hub id (``org/name``).

The loader (``mbias.models.loading``) calls ``resolve_model_ref`` and knows nothing of the zoo: the zoo, which
itself trains and loads models, is reached only from here (tests/test_imports.py keeps it so).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from mbias.errors import ModelLoadError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _zoo(name: str) -> Path:
    from mbias.zoo import zoo_model_path

    return zoo_model_path(name)


# scheme -> resolver of the NAME after "scheme:" to a local folder (or a hub id)
SCHEMES: dict[str, Callable[[str], str | Path]] = {"zoo": _zoo}


def resolve_model_ref(ref: str) -> str:
    """A local folder path or hub id for ``ref``; ``zoo:NAME`` builds the zoo model if needed."""
    scheme, sep, name = ref.partition(":")
    if sep and scheme in SCHEMES:
        return str(SCHEMES[scheme](name))
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{ref} is a file; pass the model folder (the one with config.json)")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{ref} has no config.json, so it is not a saved model folder; pass the folder "
                                 "written by save_pretrained, a hub id, or zoo:NAME")
        return str(path)
    if ref.startswith((".", "/", "~")) or not _HUB_ID.match(ref):
        raise ModelLoadError(f"no model folder at {ref}; check the path, or pass a hub id (org/name) or zoo:NAME")
    return ref
