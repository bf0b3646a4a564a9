"""Config dataclasses -> CLI flags and YAML files, so the two never drift from the code's defaults.

Every config field has a default and ``metadata={"help": ...}``. Flags are ``--field-name``; a YAML file holds
the same names (snake_case). An unknown key in a file is an error that names the closest real field (see
``build_config``). Numbers are checked in each config's ``__post_init__`` with ``check_number``, so a bad value
stops the run before any work with the field, the value and the valid range.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any

from mbias.errors import ConfigError


def _field_type(cls, f: dataclasses.Field):
    hints = typing.get_type_hints(cls)
    tp = hints.get(f.name, str)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args and typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        tp = args[0]
    return tp


def add_dataclass_args(parser: argparse.ArgumentParser | Any, cls, *, prefix: str = "", skip: tuple = ()) -> None:
    """Add one ``--prefix-field`` flag per field of ``cls``; defaults are None so files/defaults can fill in."""
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        tp = _field_type(cls, f)
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f"{help_text} (default: {default})" if help_text else f"(default: {default})"
        dest = (prefix + f.name)
        if tp is bool:
            parser.add_argument(flag, dest=dest, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(tp) in (list, tuple):
            parser.add_argument(flag, dest=dest, default=None, type=_csv(typing.get_args(tp)[0] if typing.get_args(tp) else str),
                                help=help_text + " (comma-separated)")
        else:
            parser.add_argument(flag, dest=dest, default=None, type=tp if tp in (int, float, str) else str,
                                help=help_text)


def _csv(item_type):
    def parse(text: str):
        return [item_type(x.strip()) for x in text.split(",") if x.strip()]
    return parse


def values_from_args(args: argparse.Namespace, cls, *, prefix: str = "") -> dict[str, Any]:
    """Field values the user set on the command line (unset flags are left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, prefix + f.name, None)
        if value is not None:
            out[f.name] = value
    return out


def build_config(cls, *sources: dict[str, Any], where: str = ""):
    """``cls(**merged)``, later sources winning; unknown keys and bad values -> ConfigError.

    An unknown key is an error, not a warning: a misspelt setting (``rh0: 0.1``) would otherwise run the whole
    experiment on the default and say nothing."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    merged: dict[str, Any] = {}
    for src in sources:
        if src is not None and not isinstance(src, dict):
            raise ConfigError(f"{where or 'config'}: {cls.__name__} settings must be a mapping of field: value; got "
                              f"{src!r:.80}")
        for key, value in (src or {}).items():
            if key not in names:
                close = difflib.get_close_matches(str(key), sorted(names), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(sorted(names))}"
                raise ConfigError(f"{where or 'config'}: unknown {cls.__name__} field {key!r}{hint}")
            merged[key] = value
    try:
        return cls(**merged)
    except (TypeError, ValueError) as exc:  # ValueError: TrainingArguments' own checks (bf16 without a GPU, ...)
        raise ConfigError(f"{where or cls.__name__}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split("\n")[0].split())
    return text or type(exc).__name__


def check_number(config, name: str, *, integer: bool = False, ge: float | None = None, gt: float | None = None,
                 le: float | None = None, lt: float | None = None, optional: bool = False) -> None:
    """ConfigError naming the field, its value and the valid range unless ``config.<name>`` is a finite number
    (an integer when ``integer``) within the bounds; ``optional`` lets None through ("unset")."""
    value = getattr(config, name)
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    bounds = [(op, b) for op, b in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if b is not None]
    if len(bounds) == 2:  # one lower and one upper bound: interval notation
        (lo_op, lo), (hi_op, hi) = bounds
        valid = f"{kind} in {'[' if lo_op == '>=' else '('}{lo}, {hi}{']' if hi_op == '<=' else ')'}"
    else:
        valid = " ".join([kind, *(f"{op} {b}" for op, b in bounds)])
    # bool is an int subclass, and YAML reads "2e-4" (no dot) as a string: both would fail much later
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (ge is None or value >= ge) and (gt is None or value > gt) \
        and (le is None or value <= le) and (lt is None or value < lt)
    if not ok:
        unset = " or unset" if optional else ""
        raise ConfigError(f"{type(config).__name__}.{name} must be {valid}{unset}; got {value!r}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # editors on Windows write a byte-order mark; YAML would read it as text
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{p} line {line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as "
                          "UTF-8") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of field: value at the top level")
    return data
