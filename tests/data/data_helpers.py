"""Shared helpers of the data tests: synthetic label rows and parsers of SSFT turns."""

from __future__ import annotations

import re

import numpy as np

from vlsa.config import DecodeConfig
from vlsa.data.assemble import load_image
from vlsa.data.ssft import QUARTERS
from vlsa.model.encoding import lowres_rgb


def label_row(seed: int, vq_side: int = 4, codes: int = 64, latent=(16, 4, 4)) -> dict:
    """A label row in the labeling job's layout with random content."""
    rng = np.random.default_rng(seed)
    return {
        "width": 40,
        "height": 30,
        "vq_indices": rng.integers(0, codes, (4, vq_side * vq_side)).tolist(),
        "vq_side": vq_side,
        "latent": rng.standard_normal(latent).astype(np.float32).tobytes(),
        "latent_shape": list(latent),
    }


def x_lo(seed: int, side: int = 32) -> np.ndarray:
    """A random (side, side, 3) uint8 X_Lo: what pixel targets are read from."""
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def x_lo_of(image_root: str, record, side: int = 32) -> np.ndarray:
    """X_Lo of a record's first image as the assembly decodes it (the pixel targets' source)."""
    return lowres_rgb(load_image(image_root, record.images[0], DecodeConfig()), side)


def resolution(question: str) -> tuple[int, int, int]:
    c, h, w = re.search(r"Note that the image resolution is \[(\d+), (\d+), (\d+)\]", question).groups()
    return int(c), int(h), int(w)


def quarter_index(question: str) -> int:
    (name,) = re.search(r"the (upper left|upper right|lower left|lower right) quarter of this image", question).groups()
    return QUARTERS.index(name)


def expected_vq(question: str, row: dict) -> list[int]:
    """The indices the question asks for, read from the labels by the region the question states."""
    side = row["vq_side"]
    _, size, _ = resolution(question)
    cell = size // (2 * side)
    full = np.zeros((2 * side, 2 * side), dtype=np.int64)  # the whole code grid from the four quarters
    for q in range(4):
        r, c = (q // 2) * side, (q % 2) * side
        full[r : r + side, c : c + side] = np.asarray(row["vq_indices"][q]).reshape(side, side)
    block = re.search(r"spanning rows (\d+)-(\d+) and columns (\d+)-(\d+)", question)
    if block:
        y0, y1, x0, x1 = (int(v) for v in block.groups())
        return full[y0 // cell : (y1 + 1) // cell, x0 // cell : (x1 + 1) // cell].ravel().tolist()
    q = quarter_index(question)
    r, c = (q // 2) * side, (q % 2) * side
    return full[r : r + side, c : c + side].ravel().tolist()


def expected_px(question: str, rgb: np.ndarray) -> list[list[int]]:
    """The RGB values the question asks for, read from X_Lo (h, w, 3) by the quarter and grid it states."""
    h = rgb.shape[0]
    assert resolution(question) == (3, h, rgb.shape[1])
    q = quarter_index(question)
    qh, qw = h // 2, rgb.shape[1] // 2
    quarter = rgb[(q // 2) * qh : (q // 2 + 1) * qh, (q % 2) * qw : (q % 2 + 1) * qw]
    grid = re.search(r"a grid of every (\d+)(?:st|nd|rd|th) pixel across and down", question)
    stride = int(grid.group(1)) if grid else 1
    return quarter[::stride, ::stride].reshape(-1, 3).tolist()


def stated_count(question: str) -> int | None:
    """The number of values the question says to give (None when it names only the region)."""
    m = re.search(r"so you should generate (\d+) indices", question) or re.search(r"= (\d+) RGB values", question)
    return int(m.group(1)) if m else None


def parse_vq(answer: str) -> list[int]:
    body = re.fullmatch(r"<vq start>(.*)<vq end>", answer).group(1)
    return [int(v) for v in body.split(", ")]


def parse_px(answer: str) -> list[list[int]]:
    body = re.fullmatch(r"<rgb start>\[(.*)\]<rgb end>", answer).group(1)
    return [[int(v) for v in triple.split(", ")] for triple in re.findall(r"\[(\d+, \d+, \d+)\]", body)]
