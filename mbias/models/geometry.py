"""Where each image token looks: normalised (y, x) centres, patch groups, and pixel-level painting of groups.

Image players are cells of a ``grid x grid`` partition of the part of the image the model sees (its *view box*,
e.g. the centre crop of a CLIP processor). Feature-level masking assigns each image token to the cell holding its
centre; pixel-level masking paints the cell's pixels, so both mean "this region of the picture".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def grid_coords(rows: int, cols: int) -> torch.Tensor:
    """Centres of a rows x cols raster, row-major, as a [rows*cols, 2] tensor of (y, x) in [0, 1]."""
    ys = (torch.arange(rows, dtype=torch.float32) + 0.5) / rows
    xs = (torch.arange(cols, dtype=torch.float32) + 0.5) / cols
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def square_coords(n_tokens: int) -> torch.Tensor:
    """Row-major square raster when ``n_tokens`` is a square; otherwise horizontal bands (a stated approximation)."""
    side = math.isqrt(n_tokens)
    if side * side == n_tokens:
        return grid_coords(side, side)
    return grid_coords(n_tokens, 1)


def tiled_coords(rows: int, cols: int, tile_rows: int, tile_cols: int) -> torch.Tensor:
    """Tokens of a rows x cols grid of tiles, each a tile_rows x tile_cols raster, emitted tile by tile."""
    local = grid_coords(tile_rows, tile_cols)
    out = []
    for r in range(rows):
        for c in range(cols):
            out.append(torch.stack([(r + local[:, 0]) / rows, (c + local[:, 1]) / cols], dim=-1))
    return torch.cat(out, dim=0)


def token_cells(coords: torch.Tensor, grid: int) -> torch.Tensor:
    """Cell index (row-major over a grid x grid partition) of each token centre."""
    cell = (coords.clamp(0, 1 - 1e-6) * grid).floor().long()
    return cell[:, 0] * grid + cell[:, 1]


@dataclass(frozen=True)
class PatchGroups:
    """Image players for one grid: the cells, and which player each image token belongs to.

    With feature-level masking, cells that hold no token centre (a grid finer than the token raster) are not
    players: they could only be null players, and each one would cost forward passes. With pixel-level masking
    every cell is a player (``all_cells``), because painting any cell changes what the vision tower sees.
    """

    grid: int
    cells: tuple[int, ...]  # cell index of each player
    token_group: torch.Tensor  # [N] player index of each image token

    @property
    def n(self) -> int:
        return len(self.cells)


def patch_groups(coords: torch.Tensor, grid: int, *, all_cells: bool = False) -> PatchGroups:
    """The players of a grid x grid partition: the cells holding a token centre, or every cell (``all_cells``,
    for pixel-level masking, where an empty cell's pixels still reach the tokens around it)."""
    cells = token_cells(coords, grid)
    present = list(range(grid * grid)) if all_cells else sorted(set(cells.tolist()))
    index = {c: i for i, c in enumerate(present)}
    return PatchGroups(grid, tuple(present), torch.tensor([index[c] for c in cells.tolist()], dtype=torch.long))


def crop_box(width: int, height: int, processor) -> tuple[float, float, float, float]:
    """(y0, x0, y1, x1) of the original image that survives a shortest-edge resize + centre crop, normalised."""
    if not getattr(processor, "do_center_crop", False) or getattr(processor, "crop_size", None) is None:
        return (0.0, 0.0, 1.0, 1.0)
    ch, cw = processor.crop_size.get("height"), processor.crop_size.get("width")
    shortest = processor.size.get("shortest_edge") if processor.size is not None else None
    if not (shortest and ch and cw):
        return (0.0, 0.0, 1.0, 1.0)
    scale = shortest / min(width, height)
    rw, rh = width * scale, height * scale
    fx, fy = min(1.0, cw / rw), min(1.0, ch / rh)
    return ((1 - fy) / 2, (1 - fx) / 2, (1 + fy) / 2, (1 + fx) / 2)


def paint_cells(image, baseline, masked_cells, grid: int, box=(0.0, 0.0, 1.0, 1.0)):
    """Copy of ``image`` with the cells in ``masked_cells`` replaced by the same pixels of ``baseline``."""
    from PIL import Image

    if len(masked_cells) == 0:
        return image
    a = np.asarray(image).copy()
    b = np.asarray(baseline)
    h, w = a.shape[:2]
    y0, x0, y1, x1 = box[0] * h, box[1] * w, box[2] * h, box[3] * w
    ys = np.round(np.linspace(y0, y1, grid + 1)).astype(int)
    xs = np.round(np.linspace(x0, x1, grid + 1)).astype(int)
    # edge cells reach the image border: pixels outside the view box still leak in through resize filters
    ys[0], xs[0], ys[-1], xs[-1] = 0, 0, h, w
    for g in masked_cells:
        r, c = divmod(int(g), grid)
        a[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = b[ys[r]:ys[r + 1], xs[c]:xs[c + 1]]
    return Image.fromarray(a)
