"""The audit folder on disk: manifest first, per-sample records appended and flushed, summary written atomically.

``results.jsonl`` survives ``kill -9``: each record is one line, flushed and fsynced before the next sample
starts, and a torn last line (the process died mid-write) is cut off when the run resumes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST, RESULTS, SUMMARY = "manifest.json", "results.jsonl", "summary.json"


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=_plain))
    os.replace(tmp, path)


def _plain(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def shard_path(out: Path, rank: int, world: int) -> Path:
    return out / (RESULTS if world == 1 else f"results.rank{rank}-of-{world}.jsonl")


def read_records(path: Path, *, repair: bool = False) -> list[dict]:
    """Records of a results file; a torn last line is dropped (and cut from the file when ``repair``)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    records, good_end = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good_end += len(line)
    if repair and good_end != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return records


def all_records(out: Path, *, repair: bool = False) -> list[dict]:
    """Records from results.jsonl and any per-process shards, one per sample id, in dataset order."""
    by_id = {}
    for path in [out / RESULTS, *sorted(out.glob("results.rank*-of-*.jsonl"))]:
        for rec in read_records(path, repair=repair):
            by_id.setdefault(rec["id"], rec)
    return sorted(by_id.values(), key=lambda r: r["index"])


class RecordWriter:
    """Appends one JSON line per record, flushed and fsynced (so a crash loses at most the current sample)."""

    def __init__(self, path: Path):
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.fh.write(json.dumps(record, default=_plain) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def merge_shards(out: Path) -> list[dict]:
    """Fold per-process shards into results.jsonl (dataset order) and remove them."""
    records = all_records(out)
    shards = sorted(out.glob("results.rank*-of-*.jsonl"))
    if shards:
        tmp = out / f".{RESULTS}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")
        os.replace(tmp, out / RESULTS)
        for s in shards:
            s.unlink()
    return records


def summary_problem(summary, schema: dict | None = None) -> str | None:
    """What makes ``summary`` break the summary.json contract (``reports/summary.schema.json``), as
    ``key.path: what is wrong``, or None. A small reader of the schema's own keywords, so that ``mbias report``
    explains a hand-edited or truncated summary without the jsonschema package (a dev extra)."""
    if schema is None:
        from importlib.resources import files

        schema = json.loads(files("mbias.reports").joinpath("summary.schema.json").read_text())
    return _problem(summary, schema, schema, "summary")


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value, kind: str) -> bool:
    if kind in ("number", "integer"):
        ok = isinstance(value, int if kind == "integer" else (int, float)) and not isinstance(value, bool)
        return ok or (kind == "integer" and isinstance(value, float) and value.is_integer())
    return isinstance(value, _TYPES[kind])


def _problem(value, node: dict, root: dict, where: str) -> str | None:
    if "$ref" in node:
        target = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    if "oneOf" in node and not any(_problem(value, option, root, where) is None for option in node["oneOf"]):
        return f"{where}: {json.dumps(value)[:60]} matches none of the allowed shapes"
    kinds = node.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            return f"{where} must be {' or '.join(kinds)}, not {json.dumps(value)[:60]}"
    if "const" in node and value != node["const"]:
        return f"{where} must be {node['const']!r}, not {value!r:.60}"
    if "enum" in node and value not in node["enum"]:
        return f"{where} must be one of {', '.join(map(str, node['enum']))}, not {value!r:.60}"
    if "minimum" in node and _is(value, "number") and value < node["minimum"]:
        return f"{where} must be at least {node['minimum']}, not {value}"
    if isinstance(value, dict):
        missing = [k for k in node.get("required", ()) if k not in value]
        if missing:
            return f"{where}.{missing[0]} is missing"
        for key, sub in node.get("properties", {}).items():
            if key in value:
                problem = _problem(value[key], sub, root, f"{where}.{key}")
                if problem:
                    return problem
    if isinstance(value, list):
        if not node.get("minItems", 0) <= len(value) <= node.get("maxItems", len(value)):
            return f"{where} must hold {node.get('minItems')}-{node.get('maxItems')} items, not {len(value)}"
        if "items" in node:
            for i, item in enumerate(value):
                problem = _problem(item, node["items"], root, f"{where}[{i}]")
                if problem:
                    return problem
    return None
