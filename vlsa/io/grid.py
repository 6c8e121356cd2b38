"""The reconstruction grid: each image beside its reconstruction, one row per image.

Used for the training runs' stage-end artifacts and by ``python -m vlsa.eval.reconstruct``, so the
two can be compared at a glance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, S, S) in [-1, 1] -> (S, S, 3) uint8."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def side_by_side(inputs: torch.Tensor, outputs: torch.Tensor, min_side: int = 128, gap: int = 4) -> Image.Image:
    """One row per image, input left and reconstruction right, on white with ``gap`` pixels between cells.

    Both are (N, 3, S, S) in [-1, 1]; tiny images are enlarged (nearest) to at least ``min_side`` pixels.
    """
    if inputs.shape != outputs.shape or inputs.dim() != 4:
        raise ValueError(f"grid needs inputs and outputs of one (N, 3, S, S) shape, got {tuple(inputs.shape)} "
                         f"and {tuple(outputs.shape)}")
    n, side = inputs.shape[0], inputs.shape[-1]
    scale = max(1, math.ceil(min_side / side))
    cell = side * scale
    canvas = np.full((n * cell + (n + 1) * gap, 2 * cell + 3 * gap, 3), 255, dtype=np.uint8)
    for row in range(n):
        for col, image in enumerate((inputs[row], outputs[row])):
            top, left = gap + row * (cell + gap), gap + col * (cell + gap)
            canvas[top:top + cell, left:left + cell] = to_uint8(image).repeat(scale, 0).repeat(scale, 1)
    return Image.fromarray(canvas)
