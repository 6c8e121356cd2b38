"""Per-module learning rates: each trainable module of each stage, log-uniform around its base value."""

from __future__ import annotations

from typing import Any

from vlsa.config import Config
from vlsa.tune.points import stage_key

SPREAD = 10.0
"""Each rate is drawn from [base / SPREAD, base * SPREAD]."""


def space(cfg: Config) -> dict[str, Any]:
    """One log-uniform domain per (stage, trainable module)."""
    from ray import tune

    out: dict[str, Any] = {}
    for i, stage in enumerate(cfg.train.stages):
        for module, base in sorted(stage.lr.items()):
            out[stage_key(i, f"lr.{module}")] = tune.loguniform(base / SPREAD, base * SPREAD)
    return out
