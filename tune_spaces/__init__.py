"""Search spaces and ablation grids, keyed by the dotted config paths the presets use.

``SPACES[name](cfg)`` is a Ray Tune ``param_space`` for the base config ``cfg``;
``GRIDS[name](cfg)`` is ``{row label: {dotted path: value}}`` for ``ray_jobs/ablate.py``.
The machinery that turns points into Tune spaces is ``vlsa.tune.points``; this package holds spaces only.
Ray is imported only when a space is built.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tune_spaces import ablations, loss_ratio, lr, perceiver, ssft_mix
from vlsa.config import Config
from vlsa.tune.points import named_grid, select_points

SPACES: dict[str, Callable[[Config], dict[str, Any]]] = {
    "loss_ratio": loss_ratio.grid,
    "loss_ratio_continuous": loss_ratio.continuous,
    "ssft_mix": ssft_mix.grid,
    "ssft_mix_continuous": ssft_mix.continuous,
    "lr": lr.space,
    "perceiver": perceiver.grid,
}

GRIDS: dict[str, Callable[[Config], dict[str, dict[str, Any]]]] = {
    "tab4": ablations.tab4,
    "tab5": ablations.tab5,
}


def build_space(name: str, cfg: Config, only: Sequence[str] = ()) -> dict[str, Any]:
    """The Tune ``param_space`` of space ``name`` (a registered space or ablation grid) for ``cfg``.

    ``only``: labels of the grid points to keep (named grids only); empty keeps every point.
    """
    if name in SPACES:
        space = SPACES[name](cfg)
    elif name in GRIDS:
        space = named_grid(GRIDS[name](cfg))
    else:
        raise KeyError(f"unknown space {name!r}; spaces: {sorted(SPACES)}, grids: {sorted(GRIDS)}")
    return select_points(space, list(only)) if only else space


__all__ = ["GRIDS", "SPACES", "build_space"]
