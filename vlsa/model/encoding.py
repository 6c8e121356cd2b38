"""Compressive encoding input (Sec. 3.1): pad, split into high-res tiles X_Hi, downsample to X_Lo.

The image is padded (bottom and right, black) to the smallest canvas whose sides are multiples of the
encoder input side s, giving a grid of gw x gh tiles. X_Lo is that canvas resized to s x s; the pixel
targets, the VAE input and the VQ input are all taken from the same canvas so every view shows the
same content at the same place. When gw * gh exceeds ``max_tiles`` the canvas is resized to the
largest grid within the cap (least down-scaling along the worse side) before it is cut into tiles;
X_Lo does not depend on the cap.

Shared by data assembly, labeling and inference.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image

_NORMS = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def vision_norm(kind: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel of the vision tower ``kind`` (``clip`` or ``siglip``)."""
    if kind not in _NORMS:
        raise ValueError(f"vision kind {kind!r} has no normalisation; known: {sorted(_NORMS)}")
    return _NORMS[kind]


def _check_image(image: Image.Image) -> None:
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image (3 channels), got mode {image.mode!r} with {len(image.getbands())} channel(s)")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"empty image: width={image.width}, height={image.height}")


def base_grid(width: int, height: int, image_size: int) -> tuple[int, int]:
    """(gw, gh): tiles across and down of the padded canvas, before any cap."""
    if width < 1 or height < 1:
        raise ValueError(f"empty image: width={width}, height={height}")
    return math.ceil(width / image_size), math.ceil(height / image_size)


def tile_grid(width: int, height: int, image_size: int, max_tiles: int) -> tuple[int, int]:
    """(gw, gh) of the tiles X_Hi for an image of this size; gw * gh <= max_tiles."""
    gw0, gh0 = base_grid(width, height, image_size)
    if gw0 * gh0 <= max_tiles:
        return gw0, gh0
    candidates = [
        (gw, gh) for gw in range(1, min(gw0, max_tiles) + 1) for gh in range(1, min(gh0, max_tiles // gw) + 1)
    ]
    # keep as much resolution as possible along the side that loses most, then use the most tiles
    return max(candidates, key=lambda g: (min(g[0] / gw0, g[1] / gh0), g[0] * g[1]))


def padded_canvas(image: Image.Image, image_size: int) -> Image.Image:
    """The image padded (bottom/right, black) to the smallest multiple of ``image_size`` per side."""
    _check_image(image)
    gw, gh = base_grid(image.width, image.height, image_size)
    canvas = Image.new("RGB", (gw * image_size, gh * image_size), (0, 0, 0))
    canvas.paste(image, (0, 0))
    return canvas


def normalise(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0  # (3, H, W)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean_t) / std_t


def lowres_rgb(image: Image.Image, image_size: int) -> np.ndarray:
    """X_Lo before normalisation: the padded canvas resized to (image_size, image_size, 3) uint8."""
    canvas = padded_canvas(image, image_size)
    return np.asarray(canvas.resize((image_size, image_size), Image.BICUBIC), dtype=np.uint8)


def highres_tiles(image: Image.Image, image_size: int, max_tiles: int) -> np.ndarray:
    """X_Hi before normalisation: (m, s, s, 3) uint8 tiles of the (capped) canvas, row-major."""
    canvas = padded_canvas(image, image_size)
    gw, gh = tile_grid(image.width, image.height, image_size, max_tiles)
    if (gw * image_size, gh * image_size) != canvas.size:
        canvas = canvas.resize((gw * image_size, gh * image_size), Image.BICUBIC)
    rgb = np.asarray(canvas, dtype=np.uint8)  # (gh*s, gw*s, 3)
    tiles = rgb.reshape(gh, image_size, gw, image_size, 3).transpose(0, 2, 1, 3, 4)
    return tiles.reshape(gh * gw, image_size, image_size, 3)


def encode_image(
    image: Image.Image, image_size: int, max_tiles: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_lo (3, s, s), pixel_hi (m, 3, s, s)), normalised with ``mean`` / ``std``."""
    if max_tiles < 1:
        raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
    pixel_lo = normalise(lowres_rgb(image, image_size), mean, std)
    tiles = highres_tiles(image, image_size, max_tiles)
    pixel_hi = torch.stack([normalise(tile, mean, std) for tile in tiles])  # (m, 3, s, s)
    return pixel_lo, pixel_hi


def recon_pixels(image: Image.Image, size: int, pad_multiple: int = 0) -> torch.Tensor:
    """The VAE input: the padded canvas resized to (3, size, size), values in [-1, 1].

    ``pad_multiple`` is the side the canvas is padded to a multiple of (0: ``size``); pass the
    vision input side when it differs from ``size`` so the target shows exactly X_Lo's content.
    """
    canvas = padded_canvas(image, pad_multiple or size)
    rgb = np.asarray(canvas.resize((size, size), Image.BICUBIC), dtype=np.uint8)
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1.0


class CompressiveEncoder:
    """``encode_image`` bound to one vision tower's input side, tile cap and normalisation."""

    def __init__(self, image_size: int, max_tiles: int, kind: str = "clip") -> None:
        self.image_size = image_size
        self.max_tiles = max_tiles
        self.mean, self.std = vision_norm(kind)

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_lo (3, s, s), pixel_hi (m, 3, s, s)) of one RGB image."""
        return encode_image(image, self.image_size, self.max_tiles, self.mean, self.std)

    def num_tiles(self, width: int, height: int) -> int:
        """m for an image of this size."""
        gw, gh = tile_grid(width, height, self.image_size, self.max_tiles)
        return gw * gh
