"""Dataset references -> ``Example`` records, with errors that name the file and line.

Accepted references:
- ``path/to/data.jsonl``: one record per line, ``{"id", "image", "question", "answer", "choices"?, "category"?}``,
  image paths relative to the file;
- a folder with ``metadata.jsonl`` (HF imagefolder convention; the image key may be ``file_name``);
- a folder written by ``datasets.Dataset.save_to_disk`` (needs the ``datasets`` extra);
- ``hf:REPO:SPLIT`` or ``hf:REPO:CONFIG:SPLIT``, a dataset on the HF hub read with ``datasets.load_dataset``
  (needs the ``datasets`` extra and the hub, or its cache); colons cannot occur in hub names, so the parts are
  unambiguous, and SPLIT may slice (``test[:500]``) as ``load_dataset`` allows;
- ``synth:NAME/SPLIT``, a built-in synthetic split.

``columns`` (``{field: column}``, see ``mbias.records``) names the columns of datasets that call the fields
otherwise; choices given as an index, a letter, or options inside the question are normalised there too.

Everything is validated before anything is written: by default the first bad record stops the run with its
location; ``on_error="skip"`` drops bad records and logs how many. HF datasets are read only as far as
``max_samples`` needs (their images are decoded into memory).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mbias.errors import DataError
from mbias.example import Example
from mbias.records import map_columns, resolve_choices

logger = logging.getLogger(__name__)

# about 5,000 tokens: far beyond any VQA benchmark's question, short of what would stall an audit or exhaust memory
MAX_QUESTION_CHARS = 20_000


@dataclass
class LoadedData:
    examples: Sequence[Example]
    source: str
    skipped: int = 0
    problems: tuple[str, ...] = ()


def load_data(ref: str, *, on_error: str = "stop", max_samples: int | None = None,
              columns: dict[str, str] | None = None, image_check=None) -> LoadedData:
    """Load and validate a dataset reference (see module docstring). ``image_check(path) -> problem or None``
    judges an image file (default: ``check_image``, which opens it); data-parallel audits open each image on one
    process and hand its verdicts to the others, which then skip exactly the same records."""
    if on_error not in ("stop", "skip"):
        raise DataError(f"on_error must be 'stop' or 'skip', not {on_error!r}")
    columns = columns or {}
    if ref.startswith("synth:"):
        from mbias.synth import load_synth

        if columns:
            raise DataError(f"{ref}: synthetic data has mbias's own fields; drop the column mapping")
        ds = load_synth(ref)
        examples = ds if max_samples is None else _Head(ds, max_samples)
        return LoadedData(examples, ref)
    if ref.startswith("hf:"):
        loaded = _load_hf_hub(ref, on_error, columns, max_samples)
    else:
        path = Path(ref).expanduser()
        if not path.exists():
            raise DataError(f"no dataset at {ref}; pass a .jsonl file, a folder with metadata.jsonl, a saved HF "
                            "dataset folder, hf:REPO:SPLIT, or synth:NAME/SPLIT")
        if path.is_file():
            if path.suffix != ".jsonl":
                raise DataError(f"{ref}: expected a .jsonl file (one JSON record per line)")
            loaded = _load_jsonl(path, on_error, "image", columns, image_check)
        elif (path / "metadata.jsonl").exists():
            loaded = _load_jsonl(path / "metadata.jsonl", on_error, "file_name", columns, image_check)
        elif (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            loaded = _load_hf_disk(path, on_error, columns, max_samples)
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


def check_image(path: Path) -> str | None:
    """What is wrong with an image file (missing, a looping symlink, unreadable, a decompression bomb), or None.
    Only the header is read: the pixel count is checked before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    from mbias.example import bomb_message, path_problem, refuse_bombs

    missing = path_problem(path)
    if missing:
        return missing
    try:
        with refuse_bombs(), Image.open(path) as img:
            img.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return bomb_message(path, exc)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return f"{path} is not a readable image"
    return None


def record_problem(record, *, base: Path | None, image_key: str, check_files: bool = True,
                   columns: dict[str, str] | None = None, check=None) -> str | None:
    """What is wrong with one record (after column mapping), or None."""
    if not isinstance(record, dict):
        return "expected a JSON object"

    def name(key: str) -> str:  # the user's column name, when a mapping renamed it
        return f"'{columns[key]}' (the {key} column)" if columns and key in columns else f"'{key}'"

    for key in ("question", "answer"):
        value = record.get(key)
        if value is None:
            return f"missing {name(key)} (a non-empty string)"
        if not isinstance(value, str) or not value.strip():
            return f"{name(key)} must be a non-empty string; got {value!r:.80}"
    image = record.get(image_key, record.get("image"))
    if image is None:
        return f"missing {name(image_key)} (the image path, relative to the data file)"
    if len(record["question"]) > MAX_QUESTION_CHARS:
        return (f"{name('question')} is {len(record['question']):,} characters long, over the "
                f"{MAX_QUESTION_CHARS:,} mbias takes (every question token is scored as a player, and attention "
                "grows with the square of the length); shorten it or drop the record")
    choices = record.get("choices")
    if choices is not None:
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)):
            return f"{name('choices')} must be a list of at least two strings"
        if not all(c.strip() for c in choices):
            return f"{name('choices')} holds an empty choice: {choices!r:.200}"
        seen: dict[str, str] = {}
        for c in choices:
            key = " ".join(c.casefold().split())
            if key in seen:
                return (f"{name('choices')} repeats {c!r}" + (f" (as {seen[key]!r})" if seen[key] != c else "")
                        + ": a model cannot pick one of two equal answers; keep each choice once")
            seen[key] = c
        if record["answer"] not in choices:
            return f"answer {record['answer']!r} is not one of the choices {choices}"
    if check_files and isinstance(image, str):
        return (check or check_image)((base / image) if base else Path(image))
    return None


def _lines(path: Path):
    """(line number, text or None when the line is not valid UTF-8, the decode problem) of each line.

    Editors on Windows start UTF-8 files with a byte-order mark and end lines with CRLF: the mark is dropped
    (``utf-8-sig`` on the first line) and ``\r`` is whitespace to JSON."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8"), None
            except UnicodeDecodeError as exc:
                yield lineno, None, (f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                                     "save the file as UTF-8")


class _Gate:
    """What every loader does with a record's problem: stop on it with the fix, or skip it and count it; and the
    one check every source needs, unique ids (resuming an audit relies on them)."""

    def __init__(self, on_error: str, fix: str):
        self.on_error, self.fix = on_error, fix
        self.problems: list[str] = []
        self.seen: set[str] = set()

    def accept(self, where: str, problem: str | None, rid: str | None) -> bool:
        if problem is None and rid in self.seen:
            problem = f"duplicate id {rid!r} (ids must be unique; resuming relies on them)"
        if problem:
            if self.on_error == "stop":
                raise DataError(f"{where}: {problem}; {self.fix} or pass --on-error skip")
            self.problems.append(f"{where}: {problem}")
            return False
        self.seen.add(rid)
        return True


def _load_jsonl(path: Path, on_error: str, image_key: str, columns: dict[str, str], check=None) -> LoadedData:
    examples, gate = [], _Gate(on_error, "fix the record")
    for lineno, line, problem in _lines(path):
        if line is not None and not line.strip():
            continue
        rid = None
        if problem is None:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problem = f"not valid JSON ({exc.msg} at column {exc.colno})"
            else:
                if isinstance(record, dict):
                    record = resolve_choices(map_columns(record, columns))
                problem = record_problem(record, base=path.parent, image_key=image_key, columns=columns,
                                         check=check)
                rid = None if problem else str(record.get("id", f"{path.stem}-{lineno}"))
        if not gate.accept(f"{path} line {lineno}", problem, rid):
            continue
        used = {"id", "image", image_key, "question", "answer", "choices", "category", "image_key",
                *columns.values()}
        examples.append(Example(
            id=rid, image=path.parent / record.get(image_key, record.get("image")), question=record["question"],
            answer=record["answer"], choices=record.get("choices"), category=_text(record.get("category")),
            image_key=_text(record.get("image_key")), meta={k: v for k, v in record.items() if k not in used},
        ))
    if gate.problems:
        logger.warning("skipped %d bad records in %s (first: %s)", len(gate.problems), path, gate.problems[0])
    return LoadedData(examples, str(path), len(gate.problems), tuple(gate.problems))


def _text(value) -> str | None:
    return None if value is None else str(value)


def _import_datasets(ref: str):
    try:
        import datasets
    except ImportError:
        raise DataError(f"reading {ref} needs the datasets package: pip install 'mbias[datasets]'") from None
    return datasets


def _load_hf_disk(path: Path, on_error: str, columns: dict[str, str], max_samples: int | None) -> LoadedData:
    datasets = _import_datasets(str(path))
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{path} holds the splits {', '.join(ds)}; pass {path}/SPLIT")
    return _load_hf_rows(ds, str(path), path, on_error, columns, max_samples)


def _load_hf_hub(ref: str, on_error: str, columns: dict[str, str], max_samples: int | None) -> LoadedData:
    body, bracket, split_slice = ref.removeprefix("hf:").partition("[")  # a slice (test[:500]) has its own colon
    parts = body.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise DataError(f"{ref}: write a hub dataset as hf:REPO:SPLIT or hf:REPO:CONFIG:SPLIT, e.g. "
                        "hf:lmms-lab/POPE:test")
    repo, *config, split = parts
    split += bracket + split_slice
    datasets = _import_datasets(ref)
    try:
        ds = datasets.load_dataset(repo, *config, split=split)
    except (OSError, ValueError) as exc:  # offline / unreachable / no such repo are OSErrors; a bad split a ValueError
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"could not load {ref} from the HF hub ({reason}); check the repo, config and split "
                        "names and the network (offline, only datasets in the HF cache load), or pass a folder "
                        "saved with save_to_disk") from None
    return _load_hf_rows(ds, ref, None, on_error, columns, max_samples)


def load_rows(rows, *, on_error: str = "stop", max_samples: int | None = None,
              columns: dict[str, str] | None = None) -> LoadedData:
    """Examples from data already in memory: a ``datasets.Dataset`` or a list of dicts with mbias's fields (images
    as paths or PIL images), checked as the other sources are."""
    if isinstance(rows, (list, tuple)):
        if not all(isinstance(r, dict) for r in rows):
            raise DataError("data given as a list must hold dicts {id, image, question, answer, choices?, "
                            "category?}")
        where, table = f"the list of {len(rows)} records", _Rows(rows)
    elif hasattr(rows, "column_names"):  # a datasets.Dataset (not imported here: an optional dependency)
        where, table = "the dataset", rows
    else:
        raise DataError(f"data must be a reference (str), a datasets.Dataset or a list of dicts; got "
                        f"{type(rows).__name__}")
    loaded = _load_hf_rows(table, where, None, on_error, columns or {}, max_samples)
    if not loaded.examples:
        raise DataError(f"{where}: no usable records" + (f" ({loaded.skipped} skipped)" if loaded.skipped else ""))
    return loaded


class _Rows(list):
    """A list of dicts read like a ``datasets.Dataset`` (``column_names``: every key any record has)."""

    @property
    def column_names(self) -> list[str]:
        return list(dict.fromkeys(k for r in self for k in r))


def _load_hf_rows(ds, where: str, base: Path | None, on_error: str, columns: dict[str, str],
                  max_samples: int | None) -> LoadedData:
    """Examples from a ``datasets.Dataset``; ``base`` resolves image paths stored as strings."""
    missing = [columns.get(f, f) for f in ("image", "question", "answer")
               if columns.get(f, f) not in ds.column_names]
    if missing:
        raise DataError(f"{where}: the dataset has no column(s) {', '.join(missing)}; columns: "
                        f"{', '.join(ds.column_names)}; map them with --columns FIELD=COLUMN (see docs/datasets.md)")
    examples, gate = [], _Gate(on_error, "fix the row")
    for i, raw in enumerate(ds):
        if max_samples is not None and len(examples) >= max_samples:
            break
        row = resolve_choices(map_columns(raw, columns))
        problem = record_problem(row, base=base, image_key="image", check_files=False, columns=columns)
        rid = str(row.get("id", i))
        if not gate.accept(f"{where} row {i}", problem, rid):
            continue
        image = row["image"]
        examples.append(Example(
            id=rid, image=base / image if isinstance(image, str) and base else image, question=row["question"],
            answer=row["answer"], choices=row.get("choices"), category=_text(row.get("category")),
            image_key=_text(row.get("image_key")),
            meta={"cue_answer": row["cue_answer"]} if row.get("cue_answer") is not None else {},
        ))
    if gate.problems:
        logger.warning("skipped %d bad rows in %s (first: %s)", len(gate.problems), where, gate.problems[0])
    return LoadedData(examples, where, len(gate.problems), tuple(gate.problems))
