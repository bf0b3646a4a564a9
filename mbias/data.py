"""Dataset references -> ``Example`` records, with errors that name the file and line.

Accepted references:
- ``path/to/data.jsonl``: one record per line, ``{"id", "image", "question", "answer", "choices"?, "category"?}``,
  image paths relative to the file;
- a folder with ``metadata.jsonl`` (HF imagefolder convention; the image key may be ``file_name``);
- a folder written by ``datasets.Dataset.save_to_disk`` (needs the ``datasets`` extra);
- ``synth:NAME/SPLIT``, a built-in synthetic split.

Everything is validated before anything is written: by default the first bad record stops the run with its
location; ``on_error="skip"`` drops bad records and logs how many.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mbias.errors import DataError
from mbias.example import Example

logger = logging.getLogger(__name__)


@dataclass
class LoadedData:
    examples: Sequence[Example]
    source: str
    skipped: int = 0
    problems: tuple[str, ...] = ()


def load_data(ref: str, *, on_error: str = "stop", max_samples: int | None = None) -> LoadedData:
    """Load and validate a dataset reference (see module docstring)."""
    if on_error not in ("stop", "skip"):
        raise DataError(f"on_error must be 'stop' or 'skip', not {on_error!r}")
    if ref.startswith("synth:"):
        from mbias.synth import load_synth

        ds = load_synth(ref)
        examples = ds if max_samples is None else _Head(ds, max_samples)
        return LoadedData(examples, ref)
    path = Path(ref).expanduser()
    if not path.exists():
        raise DataError(f"no dataset at {ref}; pass a .jsonl file, a folder with metadata.jsonl, a saved HF "
                        "dataset folder, or synth:NAME/SPLIT")
    if path.is_file():
        if path.suffix != ".jsonl":
            raise DataError(f"{ref}: expected a .jsonl file (one JSON record per line)")
        loaded = _load_jsonl(path, on_error, image_key="image")
    elif (path / "metadata.jsonl").exists():
        loaded = _load_jsonl(path / "metadata.jsonl", on_error, image_key="file_name")
    elif (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        loaded = _load_hf_disk(path, on_error)
    else:
        raise DataError(f"{ref} is a folder without metadata.jsonl or a saved HF dataset; see mbias audit --help")
    if max_samples is not None:
        loaded.examples = list(loaded.examples)[:max_samples]
    if not loaded.examples:
        raise DataError(f"{ref}: no usable records" + (f" ({loaded.skipped} skipped)" if loaded.skipped else ""))
    return loaded


class _Head(Sequence):
    """The first ``n`` items of a random-access dataset, without materialising it."""

    def __init__(self, ds, n: int):
        self.ds, self.n = ds, min(n, len(ds))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.ds[i % self.n]


def _check_image(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        return f"image {path} does not exist"
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return f"{path} is not a readable image"
    return None


def record_problem(record, *, base: Path | None, image_key: str, check_files: bool = True) -> str | None:
    """What is wrong with one record, or None."""
    if not isinstance(record, dict):
        return "expected a JSON object"
    for key in ("question", "answer"):
        value = record.get(key)
        if not isinstance(value, str) or not value.strip():
            return f"missing '{key}' (a non-empty string)"
    image = record.get(image_key, record.get("image"))
    if image is None:
        return f"missing '{image_key}' (the image path, relative to the data file)"
    choices = record.get("choices")
    if choices is not None:
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)):
            return "'choices' must be a list of at least two strings"
        if record["answer"] not in choices:
            return f"answer {record['answer']!r} is not one of the choices {choices}"
    if check_files and isinstance(image, str):
        return _check_image((base / image) if base else Path(image))
    return None


def _load_jsonl(path: Path, on_error: str, image_key: str) -> LoadedData:
    examples, problems, seen = [], [], set()
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problem = f"not valid JSON ({exc.msg} at column {exc.colno})"
            else:
                problem = record_problem(record, base=path.parent, image_key=image_key)
            if problem is None:
                rid = str(record.get("id", f"{path.stem}-{lineno}"))
                if rid in seen:
                    problem = f"duplicate id {rid!r} (ids must be unique; resuming relies on them)"
            if problem:
                if on_error == "stop":
                    raise DataError(f"{where}: {problem}; fix the record or pass --on-error skip")
                problems.append(f"{where}: {problem}")
                continue
            seen.add(rid)
            examples.append(Example(
                id=rid, image=path.parent / record.get(image_key, record.get("image")), question=record["question"],
                answer=record["answer"], choices=record.get("choices"), category=record.get("category"),
                meta={k: v for k, v in record.items()
                      if k not in ("id", "image", image_key, "question", "answer", "choices", "category")},
            ))
    if problems:
        logger.warning("skipped %d bad records in %s (first: %s)", len(problems), path, problems[0])
    return LoadedData(examples, str(path), len(problems), tuple(problems))


def _load_hf_disk(path: Path, on_error: str) -> LoadedData:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise DataError("reading a saved HF dataset needs the datasets package: pip install 'mbias[datasets]'") \
            from None
    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        raise DataError(f"{path} holds the splits {', '.join(ds)}; pass {path}/SPLIT")
    missing = [c for c in ("image", "question", "answer") if c not in ds.column_names]
    if missing:
        raise DataError(f"{path}: the dataset has no column(s) {', '.join(missing)}; columns: "
                        f"{', '.join(ds.column_names)}")
    examples, problems = [], []
    for i, row in enumerate(ds):
        where = f"{path} row {i}"
        problem = record_problem(row, base=path, image_key="image", check_files=False)
        if problem is None and row["image"] is None:
            problem = "no image"
        if problem:
            if on_error == "stop":
                raise DataError(f"{where}: {problem}; fix the row or pass --on-error skip")
            problems.append(f"{where}: {problem}")
            continue
        image = row["image"]
        examples.append(Example(
            id=str(row.get("id", i)), image=path / image if isinstance(image, str) else image,
            question=row["question"], answer=row["answer"], choices=row.get("choices"),
            category=row.get("category"),
        ))
    if problems:
        logger.warning("skipped %d bad rows in %s (first: %s)", len(problems), path, problems[0])
    return LoadedData(examples, str(path), len(problems), tuple(problems))
