"""LLaVA-NeXT's AnyRes input and token geometry (the ``anyres`` baseline), as LLaVA-NeXT does it.

For an image of (height, width): the best grid is chosen from ``image_grid_pinpoints`` (LLaVA-NeXT's
default at a 336 px encoder: 336x672, 672x336, 672x672, 1008x336, 336x1008, written here in tiles as
``model.encoding.anyres_grids``) by the largest effective resolution, then the least waste; the image
is resized to fit that resolution keeping its aspect ratio and padded, centred, with black; the result
is cut into tiles of the encoder side. The base view is the whole image resized to the encoder side
(a plain resize, aspect not kept). On the feature side the tiles' token grid is cropped back to the
image's aspect ratio ("unpad") and a learned newline token ends each of its rows, after the base view's
l tokens. For a 672x672 image with CLIP-L/14-336 that is 576 + 48 * (48 + 1) = 2,928 tokens.

The token count is what transformers' ``LlavaNextProcessor`` computes for the same image, and the
packing is what ``LlavaNextForConditionalGeneration`` does, so an exported baseline loads there as is.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from vlsa.model.encoding import _check_image, normalise, vision_norm

Grid = tuple[int, int]  # (rows, cols) of tiles


def pinpoints(grids: Sequence[Sequence[int]], side: int) -> list[tuple[int, int]]:
    """(height, width) resolutions of the tile grids at encoder side ``side``."""
    return [(int(rows) * side, int(cols) * side) for rows, cols in grids]


def best_resolution(height: int, width: int, resolutions: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """LLaVA-NeXT's choice: the (height, width) keeping most of the image's pixels, then wasting least."""
    best, most_kept, least_waste = resolutions[0], -1, math.inf
    for res_h, res_w in resolutions:
        scale = min(res_w / width, res_h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        waste = res_w * res_h - kept
        if kept > most_kept or (kept == most_kept and waste < least_waste):
            best, most_kept, least_waste = (res_h, res_w), kept, waste
    return best


def anyres_grid(height: int, width: int, grids: Sequence[Sequence[int]], side: int) -> Grid:
    """(rows, cols) of tiles LLaVA-NeXT cuts an image of this size into."""
    res_h, res_w = best_resolution(height, width, pinpoints(grids, side))
    return res_h // side, res_w // side


def squarest_grid(num_tiles: int) -> Grid:
    """(rows, cols) with rows * cols = ``num_tiles`` and rows <= cols as close as possible (benchmark images
    that fill their grid exactly: no unpadding, one newline per token row)."""
    rows = max(r for r in range(1, math.isqrt(num_tiles) + 1) if num_tiles % r == 0)
    return rows, num_tiles // rows


def fitted_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """(height, width) of the image resized to fit (target_h, target_w) with its aspect ratio kept."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def resize_and_pad(image: Image.Image, target_h: int, target_w: int) -> Image.Image:
    """The image fitted into (target_h, target_w) and padded, centred, with black."""
    new_h, new_w = fitted_size(image.height, image.width, target_h, target_w)
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h), Image.BICUBIC), ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def unpadded_grid(height: int, width: int, grid_h: int, grid_w: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) token rows/columns of a (grid_h, grid_w) tile-token grid that show the image.

    The padding LLaVA-NeXT added around the fitted image is cropped off, symmetrically, on the long side
    of the mismatch (rounding as transformers does).
    """
    if width / height > grid_w / grid_h:
        new_h = int(round(height * (grid_w / width), 7))
        pad = (grid_h - new_h) // 2
        return pad, grid_h - pad, 0, grid_w
    new_w = int(round(width * (grid_h / height), 7))
    pad = (grid_w - new_w) // 2
    return 0, grid_h, pad, grid_w - pad


def anyres_token_count(height: int, width: int, grids: Sequence[Sequence[int]], side: int, patch: int) -> int:
    """Visual tokens of one image: l base tokens, the unpadded tile grid, one newline per grid row."""
    g = side // patch
    rows, cols = anyres_grid(height, width, grids, side)
    top, bottom, left, right = unpadded_grid(height, width, rows * g, cols * g)
    return g * g + (bottom - top) * (right - left + 1)


class AnyResEncoder:
    """Image -> (pixel_lo (3, s, s), pixel_hi (m, 3, s, s)) the LLaVA-NeXT way (see the module doc)."""

    def __init__(self, image_size: int, grids: Sequence[Sequence[int]], kind: str = "clip") -> None:
        self.image_size, self.grids = image_size, [tuple(g) for g in grids]
        self.mean, self.std = vision_norm(kind)

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        _check_image(image)
        s = self.image_size
        rows, cols = anyres_grid(image.height, image.width, self.grids, s)
        base = np.asarray(image.resize((s, s), Image.BICUBIC), dtype=np.uint8)
        padded = np.asarray(resize_and_pad(image, rows * s, cols * s), dtype=np.uint8)  # (rows*s, cols*s, 3)
        tiles = padded.reshape(rows, s, cols, s, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, s, s, 3)
        pixel_hi = torch.stack([normalise(tile, self.mean, self.std) for tile in tiles])  # (m, 3, s, s)
        return normalise(base, self.mean, self.std), pixel_hi

    def num_tiles(self, width: int, height: int) -> int:
        """m for an image of this size."""
        rows, cols = anyres_grid(height, width, self.grids, self.image_size)
        return rows * cols
