"""w_rec : w_lm ratios of Tab. 13 (ex18-ex20 and the default 1:1), applied to every stage.

The weighted ``loss`` is not comparable across ratios: sweep these on ``tune.metric=loss_lm`` or
``eval_accuracy`` (mode max), as the paper compares them on benchmark scores.
"""

from __future__ import annotations

from typing import Any

from vlsa.config import Config
from vlsa.tune.points import copy_of, every_stage, named_grid, stage_key

# label -> (w_rec, w_lm), in the order of Tab. 13.
RATIOS = {"0.25:0.75": (0.25, 0.75), "0.5:0.5": (0.5, 0.5), "0.75:0.25": (0.75, 0.25), "1:1": (1.0, 1.0)}


def grid(cfg: Config) -> dict[str, Any]:
    """The four ratios of Tab. 13 as a grid."""
    return named_grid({label: every_stage(cfg, {"w_rec": rec, "w_lm": lm}) for label, (rec, lm) in RATIOS.items()})


def continuous(cfg: Config) -> dict[str, Any]:
    """Both weights drawn uniformly from the range Tab. 13 spans, shared by every stage."""
    from ray import tune

    space: dict[str, Any] = {stage_key(0, name): tune.uniform(0.25, 1.0) for name in ("w_rec", "w_lm")}
    for i in range(1, len(cfg.train.stages)):
        for name in ("w_rec", "w_lm"):
            space[stage_key(i, name)] = copy_of(stage_key(0, name))
    return space
