"""Cognition alignment (Sec. 3.2, App. B.11): VQ-index and pixel-value question/answer turns.

For each sample, with probabilities ``ssft.p_vq`` / ``ssft.p_px``, one of the paper's 20 instructions
per task (``ssft_instructions.json``, verbatim) is expanded with the region asked about (its
"this image" becomes e.g. "the upper left quarter of this image"), the image resolution
("[3, 672, 672]") and, for VQ, the number of indices to generate; the answer comes from the labels:
the codebook indices of the chosen quarter (``<vq start>i, j, ...<vq end>``), or comes from the image:
the RGB values of a quarter of X_Lo (``<rgb start>[[r, g, b], ...]<rgb end>``). The pair is inserted at a random position
after the first image turn.

A target never gets cut: when its answer would take more than the token budget, VQ asks for a
smaller square block of the quarter and pixels for a strided grid of it, and the instruction names
that exact region and count. Every random choice comes from (seed, epoch, sample id), so a resumed
run sees the same augmented sample.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from vlsa.config import SSFTConfig
from vlsa.io.records import ASSISTANT, USER, Turn
from vlsa.tokens import IMAGE_TOKEN, RGB_END, RGB_START, VQ_END, VQ_START, vq_code_token

QUARTERS = ("upper left", "upper right", "lower left", "lower right")
SUBJECT = "this image"
_INSTRUCTIONS = Path(__file__).with_name("ssft_instructions.json")


@lru_cache(maxsize=1)
def instructions() -> dict[str, tuple[str, ...]]:
    """The paper's instruction lists: ``{"vq": 20 templates, "px": 20 templates}``."""
    data = json.loads(_INSTRUCTIONS.read_text(encoding="utf-8"))
    return {"vq": tuple(data["vq"]), "px": tuple(data["px"])}


@dataclass(frozen=True)
class Draw:
    """The random choices of one SSFT task for one sample."""

    kind: str  # "vq" or "px"
    template: int
    quarter: int
    u_row: float
    u_col: float
    u_position: float


@dataclass
class Target:
    """One expanded SSFT question and its answer."""

    kind: str
    question: str
    answer: str
    values: list  # the VQ indices (ints) or RGB triples, in answer order
    region: str
    resolution: tuple[int, int, int]
    reduced: bool  # a smaller block / strided grid was used to fit the budget
    coverage: float = 1.0  # fraction of the named quarter's values the answer gives


class CoverageMeter:
    """Mean fraction of each SSFT target covered over the samples seen (a drawn target that did not
    fit counts 0): ``update(sample_coverages)``, ``means() -> {"ssft/vq_coverage": .., ...}``."""

    def __init__(self) -> None:
        self.sums = {"vq": 0.0, "px": 0.0}
        self.counts = {"vq": 0, "px": 0}

    def update(self, coverages: list[dict[str, float]]) -> None:
        for coverage in coverages:
            for kind, value in coverage.items():
                self.sums[kind] += float(value)
                self.counts[kind] += 1

    def means(self) -> dict[str, float]:
        return {f"ssft/{kind}_coverage": self.sums[kind] / n for kind, n in self.counts.items() if n}


def sample_rng(seed: int, epoch: int, sample_id: str) -> np.random.Generator:
    """The generator of one sample's augmentation: a pure function of (seed, epoch, sample id)."""
    key = int.from_bytes(hashlib.sha256(str(sample_id).encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, key]))


def draw(cfg: SSFTConfig, seed: int, epoch: int, sample_id: str) -> list[Draw]:
    """The SSFT tasks this sample gets (VQ first, then pixels) with their random choices.

    The same number of values is always drawn, so a change of probability does not reshuffle the
    other choices of a sample.
    """
    rng = sample_rng(seed, epoch, sample_id)
    u = rng.random(2)
    draws = []
    for kind, p, take in (("vq", cfg.p_vq, u[0]), ("px", cfg.p_px, u[1])):
        template, quarter = int(rng.integers(len(instructions()[kind]))), int(rng.integers(4))
        u_row, u_col, u_pos = rng.random(3)
        if take < p:
            draws.append(Draw(kind, template, quarter, float(u_row), float(u_col), float(u_pos)))
    return draws


# ------------------------------------------------------------------------------------------- VQ


def vq_target(
    d: Draw, row: dict, *, vq_image_size: int, budget: int, count_tokens: Callable[[str], int], encoding: str = "text"
) -> Target | None:
    """The VQ question/answer for the drawn quarter, shrunk to a square block when over ``budget``."""
    side = int(row["vq_side"])
    grid = np.asarray(row["vq_indices"][d.quarter], dtype=np.int64).reshape(side, side)
    if vq_image_size % (2 * side):
        raise ValueError(f"labels vq_side={side} (per quarter) does not divide model.vq_image_size={vq_image_size} / 2")
    cell = vq_image_size // (2 * side)  # pixels per code at the stated resolution
    if budget <= 0:
        return None
    answer = _vq_answer(grid.ravel(), encoding)
    used = count_tokens(answer)
    if used <= budget:
        return _vq(d, grid.ravel(), answer, f"the {QUARTERS[d.quarter]} quarter of {SUBJECT}", vq_image_size, False, 1.0)
    # start from the block size the average tokens per code allows, then shrink until it fits
    for k in range(min(side - 1, math.isqrt(budget * side * side // used)), 0, -1):
        r0, c0 = int(d.u_row * (side - k + 1)), int(d.u_col * (side - k + 1))
        block = grid[r0 : r0 + k, c0 : c0 + k].ravel()
        answer = _vq_answer(block, encoding)
        if count_tokens(answer) <= budget:
            y0 = (d.quarter // 2) * side * cell + r0 * cell
            x0 = (d.quarter % 2) * side * cell + c0 * cell
            y1, x1 = y0 + k * cell - 1, x0 + k * cell - 1
            region = f"the region of {SUBJECT} spanning rows {y0}-{y1} and columns {x0}-{x1}"
            return _vq(d, block, answer, region, vq_image_size, True, block.size / grid.size)
    return None


def _vq_answer(codes: np.ndarray, encoding: str) -> str:
    if encoding == "tokens":
        return VQ_START + "".join(vq_code_token(int(c)) for c in codes) + VQ_END
    return VQ_START + ", ".join(str(int(c)) for c in codes) + VQ_END


def _vq(d: Draw, codes: np.ndarray, answer: str, region: str, size: int, reduced: bool, coverage: float) -> Target:
    template = instructions()["vq"][d.template]
    note = f" Note that the image resolution is [3, {size}, {size}], so you should generate {codes.size} indices."
    question = template.replace(SUBJECT, region, 1) + note
    return Target("vq", question, answer, [int(c) for c in codes], region, (3, size, size), reduced, coverage)


# --------------------------------------------------------------------------------------- pixels


def px_target(d: Draw, rgb: np.ndarray, *, budget: int, count_tokens: Callable[[str], int]) -> Target | None:
    """The pixel question/answer for the drawn quarter of X_Lo (``rgb``: (h, h, 3) uint8, see
    ``vlsa.model.encoding.lowres_rgb``), strided when over ``budget``."""
    if budget <= 0:
        return None
    quarter = quarter_of(rgb, d.quarter)
    full = _px_answer(quarter.reshape(-1, 3))
    used = count_tokens(full)
    stride = 1 if used <= budget else max(2, math.ceil(math.sqrt(used / budget)))
    while stride <= max(quarter.shape[:2]):
        grid = quarter[::stride, ::stride]
        answer = full if stride == 1 else _px_answer(grid.reshape(-1, 3))
        if (used if stride == 1 else count_tokens(answer)) <= budget:
            return _px(d, grid, answer, stride, (3, rgb.shape[0], rgb.shape[1]), grid.size / quarter.size)
        stride += 1
    return None


def quarter_of(array: np.ndarray, quarter: int) -> np.ndarray:
    """Quarter ``quarter`` (upper left, upper right, lower left, lower right) of an (H, W, ...) array."""
    h, w = array.shape[:2]
    rows = slice(0, h // 2) if quarter < 2 else slice(h // 2, h)
    cols = slice(0, w // 2) if quarter % 2 == 0 else slice(w // 2, w)
    return array[rows, cols]


def _px_answer(values: np.ndarray) -> str:
    return RGB_START + "[" + ", ".join(f"[{r}, {g}, {b}]" for r, g, b in values.tolist()) + "]" + RGB_END


def _px(d: Draw, grid: np.ndarray, answer: str, stride: int, resolution: tuple[int, int, int],
        coverage: float) -> Target:
    name = f"the {QUARTERS[d.quarter]} quarter of {SUBJECT}"
    note = f" Note that the image resolution is [{resolution[0]}, {resolution[1]}, {resolution[2]}]."
    region = name
    if stride > 1:
        region = f"a grid of every {_ordinal(stride)} pixel across and down {name}, starting at its top left pixel"
        rows, cols = grid.shape[:2]
        note = note[:-1] + f", so you should give {rows} x {cols} = {rows * cols} RGB values."
    question = instructions()["px"][d.template].replace(SUBJECT, region, 1) + note
    values = grid.reshape(-1, 3).tolist()
    return Target("px", question, answer, values, region, resolution, stride > 1, coverage)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# ------------------------------------------------------------------------------------- insertion


def insert(turns: list[Turn], target: Target, u_position: float) -> list[Turn]:
    """The conversation with the target's question/answer pair inserted between whole turn pairs.

    The position is drawn among the pair boundaries after the first pair that shows an image, so the
    question always comes after the image it asks about.
    """
    pairs = len(turns) // 2
    first = next((i for i in range(pairs) if IMAGE_TOKEN in turns[2 * i].content), 0)
    choices = pairs - first  # boundaries first+1 .. pairs
    position = first + 1 + min(int(u_position * choices), choices - 1)
    pair = [Turn(USER, target.question, ssft=True), Turn(ASSISTANT, target.answer, ssft=True)]
    return turns[: 2 * position] + pair + turns[2 * position :]
