"""Which input views a projector takes: the image encoder of a model configuration.

- VLSA and the projectors built on its compressive encoding (SA-Perceiver, LLaVA-1.5-HD's grid,
  Q-former, pixel-unshuffle): ``CompressiveEncoder`` (padded canvas -> X_Lo and tiles X_Hi);
- LLaVA-1.5 (``mlp2x_gelu`` with ``encoding.lowres_view: square_pad``): the image padded to a square
  with the mean colour of the vision tower's normalisation (LLaVA's ``expand2square``), then resized;
- LLaVA-NeXT (``anyres``): ``AnyResEncoder``, its own best-resolution tiling and plain-resized base view.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vlsa.config import EncodingConfig
from vlsa.model.anyres import AnyResEncoder
from vlsa.model.encoding import CompressiveEncoder, _check_image, normalise, vision_norm


def square_pad(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5's ``expand2square``: the image centred on a square of ``colour``."""
    side = max(image.width, image.height)
    canvas = Image.new("RGB", (side, side), colour)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


class SquarePadEncoder:
    """LLaVA-1.5's view: pixel_lo is the mean-colour square padding resized to s; pixel_hi repeats it as the one tile."""

    def __init__(self, image_size: int, kind: str = "clip") -> None:
        self.image_size = image_size
        self.mean, self.std = vision_norm(kind)
        self.colour = tuple(int(m * 255) for m in self.mean)  # LLaVA: tuple(int(x * 255) for x in image_mean)

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        _check_image(image)
        s = self.image_size
        rgb = np.asarray(square_pad(image, self.colour).resize((s, s), Image.BICUBIC), dtype=np.uint8)
        lo = normalise(rgb, self.mean, self.std)
        return lo, lo[None]

    def num_tiles(self, width: int, height: int) -> int:
        return 1


def make_encoder(projector: str, image_size: int, encoding: EncodingConfig, vision_kind: str):
    """The image -> (pixel_lo, pixel_hi) encoder the projector ``projector`` is trained and served with."""
    if projector == "anyres":
        return AnyResEncoder(image_size, encoding.anyres_grids, vision_kind)
    if encoding.lowres_view == "square_pad":
        return SquarePadEncoder(image_size, vision_kind)
    return CompressiveEncoder(image_size, encoding.max_tiles, vision_kind)
