"""The one record type every dataset source yields, and image opening with actionable errors."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mbias.errors import DataError

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class Example:
    """One visual question. ``image`` is a PIL image or a path; ``choices`` turns answering into multiple choice.

    ``image_key`` groups questions that share one image (bootstrap intervals resample by it); it defaults to the
    image path, or the id when the image is in memory.
    """

    id: str
    image: Image.Image | str | Path | None
    question: str
    answer: str
    choices: list[str] | None = None
    category: str | None = None
    image_key: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.image_key is None:
            self.image_key = str(self.image) if isinstance(self.image, (str, Path)) else str(self.id)

    def load_image(self) -> Image.Image:
        """The image as an RGB PIL image (EXIF orientation applied)."""
        if self.image is None:
            raise DataError(f"example {self.id!r} has no image")
        return open_image(self.image, where=f"example {self.id!r}")


def open_image(image, where: str = "") -> Image.Image:
    """Open a path or PIL image as RGB, applying EXIF orientation; palette/RGBA/grey images are converted.

    Transparent pixels are composited on white, as a viewer would show them, rather than on black.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    prefix = f"{where}: " if where else ""
    if isinstance(image, Image.Image):
        img = image
    else:
        path = Path(image)
        if not path.exists():
            raise DataError(f"{prefix}image file {path} does not exist; check the path (it is relative to the data file)")
        try:
            img = Image.open(path)
            img.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{prefix}{path} is not a readable image ({exc}); replace or remove it") from None
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def normalize_answer(text: str) -> str:
    """VQA-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())
