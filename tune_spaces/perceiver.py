"""SA-Perceiver structure (Tab. 8): the default and ablations ex1-ex3."""

from __future__ import annotations

from typing import Any

from tune_spaces.points import named_grid
from vlsa.config import Config

_P = "model.projector."
VARIANTS = {
    "default": {_P + "self_attention": True, _P + "full_projections": False, _P + "global_embedding": "query"},
    "ex1_no_self_attention": {_P + "self_attention": False, _P + "full_projections": False, _P + "global_embedding": "query"},
    "ex2_full_projections": {_P + "self_attention": True, _P + "full_projections": True, _P + "global_embedding": "query"},
    "ex3_pooled_global": {_P + "self_attention": True, _P + "full_projections": False, _P + "global_embedding": "pool"},
}


def grid(cfg: Config) -> dict[str, Any]:
    """The four variants as a grid (the projector type is forced to the SA-Perceiver)."""
    return named_grid({label: {_P + "type": "sa_perceiver"} | values for label, values in VARIANTS.items()})
