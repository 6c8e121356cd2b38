"""Cognition-alignment mix (Tab. 5): pixel-value and VQ-index SSFT tasks on/off, and their probabilities.

The tasks are inserted in the stages that use them in the base config (the instruction-tuning
stages); when none does, in the last stage.
"""

from __future__ import annotations

from typing import Any

from vlsa.config import Config
from vlsa.tune import grids
from vlsa.tune.points import copy_of, named_grid, stage_key

ssft_stages, _probabilities = grids.ssft_stages, grids.ssft_probabilities


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
