"""SA-Perceiver structure (Tab. 8): the default and ablations ex1-ex3."""

from __future__ import annotations

from typing import Any

from vlsa.config import Config
from vlsa.tune.points import named_grid

_P = "model.projector."


def _structure(self_attention: bool, full_projections: bool, global_embedding: str) -> dict[str, Any]:
    return {_P + "self_attention": self_attention, _P + "full_projections": full_projections,
            _P + "global_embedding": global_embedding}


VARIANTS = {
    "default": _structure(True, False, "query"),
    "ex1_no_self_attention": _structure(False, False, "query"),
    "ex2_full_projections": _structure(True, True, "query"),
    "ex3_pooled_global": _structure(True, False, "pool"),
}


def grid(cfg: Config) -> dict[str, Any]:
    """The four variants as a grid (the projector type is forced to the SA-Perceiver)."""
    return named_grid({label: {_P + "type": "sa_perceiver"} | values for label, values in VARIANTS.items()})
