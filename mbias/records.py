"""A dataset's own record -> mbias's fields: column mapping and multiple-choice normalisation.

Public VQA sets name their columns their own way (VQAv2's ``multiple_choice_answer``, A-OKVQA's
``correct_choice_idx``), so a mapping ``{field: column}`` says where each mbias field is (``docs/datasets.md``
lists the mappings of common sets). Choices come in one of two shapes, both turned into ``choices`` + an
``answer`` that is one of them:
- a list column: the answer is a choice's text, its index (an integer), or its letter (``"B"`` = the second);
- options written inside the question (``"A. cat\\nB. dog"``, ``"Options: A: cat, B: dog"``, ``"(A) cat"``) with
  the answer given as a letter: the question stays as written (the model reads the options, as the benchmark
  intends) and the choices are the option letters, so the model is scored on answering with the letter.
"""

from __future__ import annotations

import re

from mbias.errors import ConfigError

FIELDS = ("id", "image", "question", "answer", "choices", "category", "image_key")

# an option marker: "A." "A:" "A)" or "(A)", at the start of the text or after whitespace
_OPTION = re.compile(r"(?:^|(?<=\s))\(?([A-Z])[.:)]")
_LETTER = re.compile(r"^[A-Z]$")


def parse_columns(value) -> dict[str, str]:
    """``{field: column}`` from a dict or from ``"field=column,field=column"``; a bad entry is a ConfigError."""
    if isinstance(value, str):
        pairs = {}
        for item in filter(None, (x.strip() for x in value.split(","))):
            field, sep, column = (x.strip() for x in item.partition("="))
            if not (sep and field and column):
                raise ConfigError(f"columns: expected FIELD=COLUMN, got {item!r} (e.g. answer=multiple_choice_answer)")
            pairs[field] = column
        value = pairs
    if not isinstance(value, dict) or not all(isinstance(c, str) and c for c in value.values()):
        raise ConfigError(f"columns must map fields to column names, e.g. {{answer: multiple_choice_answer}}; "
                          f"got {value!r}")
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise ConfigError(f"columns: unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
    return dict(value)


def map_columns(record: dict, columns: dict[str, str]) -> dict:
    """``record`` with each mapped column under its field name. A mapped column that the record lacks leaves the
    field missing (not the record's own column of that name, which the mapping said to ignore)."""
    out = dict(record)
    for field, column in columns.items():
        if column in record:
            out[field] = record[column]
        else:
            out.pop(field, None)
    return out


def option_letters(question: str) -> list[str]:
    """The option letters written in ``question``: the run A, B, C, ... of option markers, in order.

    A stray marker (``"vitamin A. Which ..."``) is skipped because the run must continue with the next letter."""
    letters: list[str] = []
    for match in _OPTION.finditer(question):
        if match.group(1) == chr(ord("A") + len(letters)):
            letters.append(match.group(1))
    return letters


def resolve_choices(record: dict) -> dict:
    """``record`` with ``answer`` as one of ``choices`` where the dataset gives an index or a letter instead."""
    choices, answer = record.get("choices"), record.get("answer")
    if isinstance(choices, list):
        if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
            return {**record, "answer": choices[answer]}
        if isinstance(answer, str) and _LETTER.match(answer.strip()) and answer not in choices:
            index = ord(answer.strip()) - ord("A")
            if index < len(choices):
                return {**record, "answer": choices[index]}
        return record
    if choices is None and isinstance(answer, str) and _LETTER.match(answer.strip()) \
            and isinstance(record.get("question"), str):
        letters = option_letters(record["question"])
        if len(letters) >= 2 and answer.strip() in letters:
            return {**record, "answer": answer.strip(), "choices": letters}
    return record
