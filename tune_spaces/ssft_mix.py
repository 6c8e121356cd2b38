"""Cognition-alignment mix (Tab. 5): pixel-value and VQ-index SSFT tasks on/off, and their probabilities.

The tasks are inserted in the stages that use them in the base config (the instruction-tuning
stages); when none does, in the last stage.
"""

from __future__ import annotations

from typing import Any

from vlsa.config import Config
from vlsa.tune.points import copy_of, named_grid, stage_key

DEFAULT_P = 0.3
"""Insertion probability of an enabled task when the base config gives none."""


def ssft_stages(cfg: Config) -> list[int]:
    """Indices of the stages whose data get SSFT turns."""
    used = [i for i, s in enumerate(cfg.train.stages) if s.data.ssft.p_vq > 0 or s.data.ssft.p_px > 0]
    return used or [len(cfg.train.stages) - 1]


def _probabilities(cfg: Config, pixels: bool, vq: bool) -> dict[str, float]:
    out = {}
    for i in ssft_stages(cfg):
        ssft = cfg.train.stages[i].data.ssft
        out[stage_key(i, "data.ssft.p_px")] = (ssft.p_px or DEFAULT_P) if pixels else 0.0
        out[stage_key(i, "data.ssft.p_vq")] = (ssft.p_vq or DEFAULT_P) if vq else 0.0
    return out


def grid(cfg: Config) -> dict[str, Any]:
    """Tab. 5: neither task, VQ indices only, pixel values only, both."""
    points = {"none": (False, False), "vq": (False, True), "pixels": (True, False), "both": (True, True)}
    return named_grid({label: _probabilities(cfg, px, vq) for label, (px, vq) in points.items()})


def continuous(cfg: Config) -> dict[str, Any]:
    """Both probabilities uniform in [0, 0.6], the same in every SSFT stage."""
    from ray import tune

    first, *rest = ssft_stages(cfg)
    space: dict[str, Any] = {}
    for name in ("p_px", "p_vq"):
        space[stage_key(first, f"data.ssft.{name}")] = tune.uniform(0.0, 0.6)
        for i in rest:
            space[stage_key(i, f"data.ssft.{name}")] = copy_of(stage_key(first, f"data.ssft.{name}"))
    return space
