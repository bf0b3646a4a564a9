"""The one record type every dataset source yields, and image opening with actionable errors."""

from __future__ import annotations

import contextlib
import errno
import re
import string
import warnings
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
        missing = path_problem(path)
        if missing:
            raise DataError(f"{prefix}{missing}")
        try:
            with refuse_bombs():
                img = Image.open(path)
                img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(f"{prefix}{bomb_message(path, exc)}") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{prefix}{path} is not a readable image ({_first_line(exc)}); replace or remove "
                            "it") from None
    img = ImageOps.exif_transpose(img)
    img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def path_problem(path: Path) -> str | None:
    """What keeps ``path`` from being opened as a file (missing, a dangling or looping symlink, a folder), or
    None. ``Path.exists`` says False for a symlink loop, which would read as "does not exist"."""
    try:
        path.stat()
    except OSError as exc:
        if path.is_symlink():
            why = "loops" if exc.errno == errno.ELOOP else "points to nothing"
            return f"image {path} is a symbolic link that {why}; point it to the image file"
        return f"image file {path} does not exist; check the path (it is relative to the data file)"
    if not path.is_file():
        return f"image {path} is not a file; give the path of an image file"
    return None


def bomb_message(path: Path, exc: Exception) -> str:
    """One line for an image larger than PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``)."""
    from PIL import Image

    size = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(size.group(1)) / 1e6:.0f} megapixels" if size else "too many pixels"
    return (f"{path} decodes to {pixels}, over the {Image.MAX_IMAGE_PIXELS / 1e6:.0f}-megapixel limit that guards "
            "against decompression bombs; downscale the image (the model sees it at a few hundred pixels a side)")


@contextlib.contextmanager
def refuse_bombs():
    """PIL warns, and still decodes, between its pixel limit and twice it; mbias refuses both, before decoding."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _to_8bit(img: Image.Image) -> Image.Image:
    """Greyscale images of 16-bit integers (``I;16``, or ``I`` as 16-bit PNGs open) and of floats (``F``) as
    8-bit ``L``, keeping their tones: PIL's own conversion clips every value above 255 to white."""
    if not (img.mode.startswith("I") or img.mode == "F"):
        return img
    import numpy as np
    from PIL import Image

    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0  # floats in [0, 1], or already 0-255
    else:
        top = 255.0 if arr.size and arr.max() <= 255 else 65535.0
    return Image.fromarray(np.clip(np.nan_to_num(arr) / top * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def normalize_answer(text: str) -> str:
    """VQA-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())
