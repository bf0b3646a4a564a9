"""Synthetic VQA with a planted language prior: the ground truth the probes must find and the recipes reduce.

Each question carries a *cue* in its text, its wording: every phrasing of a question type is tied to one
*cue answer* (as VQA-CP's priors are tied to question types). Wording is invisible in the picture, so following
it is relying on language. In the splits with prior ``p`` the answer equals the cue answer with probability
``p + (1 - p) / K`` (K = number of answers of that question type): with probability ``p`` the cue answer is
planted, otherwise the answer is drawn uniformly. ``p = 0`` is no correlation. The image is then drawn to
make that answer true, so the picture always decides.

Splits: ``train`` and ``val`` and ``test-id`` (prior p), ``test-cp`` (counter-prior: the cue answer is never
right, as in VQA-CP), ``test-balanced`` (no correlation). Names: ``synth:shapes-pNN/SPLIT``.
Every example is a pure function of (dataset, split, index): deterministic and randomly accessible.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbias.errors import DataError
from mbias.example import Example
from mbias.synth.scenes import COLOURS, GRID, POSITIONS, SHAPES, Obj, draw_scene

SYNTH_VERSION = 1  # bump when generation changes: zoo models trained on the old data are then rebuilt
PRIORS = {"00": 0.0, "50": 0.5, "70": 0.7, "90": 0.9, "99": 0.99}
SPLITS = {"train": 6000, "val": 400, "test-id": 500, "test-cp": 500, "test-balanced": 500}
COLOUR_NAMES = tuple(COLOURS)
COUNT_WORDS = ("one", "two", "three")

# The cue is the question's wording: each phrasing of a question type is tied to one answer (its cue answer).
# Wording is text-only information, so a model that follows it is relying on language, not on the picture.
COLOUR_PHRASINGS = {
    "What colour is the shape?": "red",
    "What is the colour of the object?": "green",
    "Which colour does the object have?": "blue",
    "Name the colour of the shape.": "yellow",
    "What colour is the object in the image?": "purple",
    "Tell me the colour of the shape.": "orange",
}
SHAPE_PHRASINGS = {
    "What shape is it?": "circle",
    "Which shape is shown?": "square",
    "What is the shape of the object?": "triangle",
    "Name the shape in the image.": "diamond",
}
POSITION_PHRASINGS = {
    "Where is the shape?": "left",
    "Is the object on the left or on the right?": "right",
}
COUNT_PHRASINGS = {
    "How many shapes are there?": "one",
    "How many objects can you see?": "two",
    "Count the shapes in the image.": "three",
}
EXISTS_PHRASINGS = {"Is there a shape in the image?": "yes", "Can you see any object?": "no"}
PHRASINGS = {"colour": COLOUR_PHRASINGS, "shape": SHAPE_PHRASINGS, "position": POSITION_PHRASINGS,
             "count": COUNT_PHRASINGS, "exists": EXISTS_PHRASINGS}

CATEGORIES = ("colour", "shape", "position", "count", "exists")
ANSWERS = {
    "colour": COLOUR_NAMES, "shape": SHAPES, "position": POSITIONS, "count": COUNT_WORDS, "exists": ("yes", "no"),
}


@dataclass(frozen=True)
class SynthSpec:
    """A synthetic dataset: its prior, image size, question types and split sizes."""

    name: str
    prior: float
    image_size: int = 32
    categories: tuple[str, ...] = CATEGORIES
    seed: int = 0

    def split_size(self, split: str) -> int:
        return SPLITS[split]


def known_names() -> list[str]:
    return [f"shapes-p{k}/{s}" for k in PRIORS for s in SPLITS]


def parse_name(ref: str) -> tuple[SynthSpec, str]:
    """``[synth:]shapes-pNN/SPLIT`` -> (spec, split), or a DataError listing the valid names."""
    name = ref.removeprefix("synth:")
    base, _, split = name.partition("/")
    key = base.removeprefix("shapes-p")
    if not base.startswith("shapes-p") or key not in PRIORS or split not in SPLITS:
        valid = ", ".join(f"shapes-p{k}" for k in PRIORS)
        raise DataError(f"unknown synthetic dataset {ref!r}; use synth:NAME/SPLIT with NAME in {valid} and SPLIT "
                        f"in {', '.join(SPLITS)}")
    return SynthSpec(name=base, prior=PRIORS[key]), split


class SynthDataset:
    """Random-access view of one split; ``ds[i]`` draws example i (deterministic)."""

    def __init__(self, spec: SynthSpec, split: str, size: int | None = None):
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        self.spec, self.split = spec, split
        self.size = spec.split_size(split) if size is None else size
        self._split_code = int(hashlib.sha256(f"{spec.name}/{split}".encode()).hexdigest()[:8], 16)

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        return (self[i] for i in range(self.size))

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < self.size:
            raise IndexError(i)
        rng = np.random.default_rng([self.spec.seed, self._split_code, i])
        category = self.spec.categories[int(rng.integers(len(self.spec.categories)))]
        question, answer, cue_answer, objects = _make_question(category, rng, self._mode(), self.spec.prior)
        image = draw_scene(objects, self.spec.image_size, rng)
        return Example(
            id=f"{self.spec.name}/{self.split}/{i:05d}", image=image, question=question, answer=answer,
            choices=list(ANSWERS[category]), category=category,
            meta={"cue_answer": cue_answer, "follows_prior": answer == cue_answer},
        )

    def _mode(self) -> str:
        return {"test-cp": "counter", "test-balanced": "balanced"}.get(self.split, "prior")


def _pick_answer(rng, answers, cue_answer, mode: str, prior: float) -> str:
    if mode == "counter":
        others = [a for a in answers if a != cue_answer]
        return others[int(rng.integers(len(others)))]
    if mode == "prior" and rng.random() < prior:
        return cue_answer
    return answers[int(rng.integers(len(answers)))]


def _cell(rng, col: int | None = None) -> tuple[int, int]:
    return int(rng.integers(GRID)), int(rng.integers(GRID)) if col is None else col


def _colour(rng) -> str:
    return COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]


def _make_question(category: str, rng, mode: str, prior: float):
    """(question, answer, cue answer, objects). One object per scene, except for counting."""
    if category not in PHRASINGS:
        raise DataError(f"unknown synthetic question type {category!r}; use {', '.join(CATEGORIES)}")
    phrasings = list(PHRASINGS[category])
    phrasing = phrasings[int(rng.integers(len(phrasings)))]
    cue = PHRASINGS[category][phrasing]
    answer = _pick_answer(rng, ANSWERS[category], cue, mode, prior)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    question = phrasing
    if category == "colour":
        objects = [Obj(shape, answer, *_cell(rng))]
    elif category == "shape":
        objects = [Obj(answer, _colour(rng), *_cell(rng))]
    elif category == "position":
        objects = [Obj(shape, _colour(rng), *_cell(rng, POSITIONS.index(answer)))]
    elif category == "count":
        n = COUNT_WORDS.index(answer) + 1
        cells = [(r, c) for r in range(GRID) for c in range(GRID)]
        picks = rng.permutation(len(cells))[:n]
        objects = [Obj(SHAPES[int(rng.integers(len(SHAPES)))], _colour(rng), *cells[k]) for k in picks]
    else:  # exists: one object (yes) or an empty scene (no)
        objects = [Obj(shape, _colour(rng), *_cell(rng))] if answer == "yes" else []
    return question, answer, cue, objects


def load_synth(ref: str) -> SynthDataset:
    spec, split = parse_name(ref)
    return SynthDataset(spec, split)


def export_synth(ref: str, out_dir: str | Path, limit: int | None = None) -> Path:
    """Write ``data.jsonl`` and ``images/*.png`` in the standard record format; returns the JSONL path."""
    spec, split = parse_name(ref)
    ds = SynthDataset(spec, split, size=None if limit is None else min(limit, SPLITS[split]))
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    tmp = out / "data.jsonl.tmp"
    with tmp.open("w") as fh:
        for i, ex in enumerate(ds):
            rel = f"images/{i:05d}.png"
            ex.image.save(out / rel)
            record = {"id": ex.id, "image": rel, "question": ex.question, "answer": ex.answer,
                      "choices": ex.choices, "category": ex.category, "cue_answer": ex.meta["cue_answer"]}
            fh.write(json.dumps(record) + "\n")
    tmp.replace(out / "data.jsonl")
    return out / "data.jsonl"
