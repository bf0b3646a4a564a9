"""Procedural scenes: a few coloured shapes on a plain or lightly noisy background, drawn with PIL.

Objects sit in the cells of a GRID x GRID layout (so they never overlap and "left/right" is the column). With
the zoo's 32 px images and 8 px ViT patches each object covers an aligned 2x2 block of patches, small enough for
a CPU to train on and fine enough that a tiny ViT can learn shapes from scratch. Every attribute a question asks about is a property of an object in the scene, so the image always
determines the true answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
POSITIONS = ("left", "right")
GRID = 2


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    row: int
    col: int  # 0 = left, 1 = right
    # 1 = the palette colour; towards 0 the object fades into the background shade (the shipped splits use 1;
    # benchmarks/zoo_faint_exists.py tries faint objects)
    contrast: float = 1.0


def draw_scene(objects: list[Obj], size: int, rng: np.random.Generator):
    """An RGB PIL image of ``objects``; background shade, noise and object size jitter come from ``rng``."""
    from PIL import Image, ImageDraw

    # dark backgrounds: every object colour is brighter than the background in sum, so "where is the object"
    # is a sign-consistent signal and a tiny ViT can learn shapes from scratch
    shade = int(rng.integers(15, 75))
    bg = np.full((size, size, 3), shade, dtype=np.float32)
    if rng.random() < 0.5:  # half the scenes get mild noise, so a constant background is no shortcut
        bg += rng.normal(0, 10, bg.shape)
    img = Image.fromarray(bg.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    cell = size / GRID
    for obj in objects:
        # sizes and offsets keep each object inside its cell
        half = cell * float(rng.uniform(0.40, 0.47))
        cy = (obj.row + 0.5) * cell + float(rng.uniform(-0.05, 0.05)) * cell
        cx = (obj.col + 0.5) * cell + float(rng.uniform(-0.05, 0.05)) * cell
        colour = COLOURS[obj.colour]
        if obj.contrast < 1.0:
            colour = tuple(round(shade + obj.contrast * (c - shade)) for c in colour)
        _draw_shape(draw, obj.shape, cx, cy, half, colour)
    return img


def _draw_shape(draw, shape: str, cx: float, cy: float, half: float, fill) -> None:
    if shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif shape == "square":
        s = half * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx - half, cy + half * 0.85), (cx + half, cy + half * 0.85)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - half), (cx + half, cy), (cx, cy + half), (cx - half, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
