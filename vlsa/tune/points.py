"""Building blocks of search spaces: named grid points and per-stage keys.

A space is a mapping of dotted config paths (as the presets and ``key=value`` overrides use) to
values or Ray Tune domains. A grid of named points becomes a grid over ``tune.variant`` plus, for
every path a point sets, a value derived from the variant, so every key stays a config path.
"""

from __future__ import annotations

from typing import Any, Callable

from vlsa.config import Config

VARIANT_KEY = "tune.variant"


def stage_key(index: int, field: str) -> str:
    """Dotted path of one stage's field, e.g. ``train.stages.1.w_rec``."""
    return f"train.stages.{index}.{field}"


def every_stage(cfg: Config, values: dict[str, Any]) -> dict[str, Any]:
    """The same stage-field values for every stage of ``cfg``."""
    return {stage_key(i, k): v for i in range(len(cfg.train.stages)) for k, v in values.items()}


def named_grid(points: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A grid over named points ``{label: {dotted path: value}}``; paths a point omits keep the base value."""
    from ray import tune

    paths = sorted({path for overrides in points.values() for path in overrides})
    missing = {label: [p for p in paths if p not in o] for label, o in points.items()}
    missing = {label: p for label, p in missing.items() if p}
    if missing:
        raise ValueError(f"every grid point must set the same paths; missing: {missing}")
    space: dict[str, Any] = {VARIANT_KEY: tune.grid_search(list(points))}
    for path in paths:
        space[path] = tune.sample_from(_pick(points, path))
    return space


def select_points(space: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """``space`` (a named grid) restricted to the points ``labels``, in that order."""
    domain = space.get(VARIANT_KEY)
    if not isinstance(domain, dict) or "grid_search" not in domain:
        raise ValueError(f"only a named grid has points to select; this space has no {VARIANT_KEY} grid")
    grid = domain["grid_search"]
    unknown = [label for label in labels if label not in grid]
    if unknown:
        raise ValueError(f"grid has no point(s) {unknown}; its points: {grid}")
    return space | {VARIANT_KEY: {"grid_search": list(labels)}}


def _pick(points: dict[str, dict[str, Any]], path: str) -> Callable:
    def pick(config: dict[str, Any]) -> Any:
        return points[config[VARIANT_KEY]][path]

    return pick


def copy_of(path: str) -> Callable:
    """A Tune ``sample_from`` function giving the value another path of the same trial drew."""
    from ray import tune

    return tune.sample_from(lambda config: config[path])


def sample_points(space: dict[str, Any], count: int = 0) -> list[dict[str, Any]]:
    """Resolved points of ``space`` (every grid point; ``count`` random draws per grid point, default 1).

    Resolved as a ``Tuner`` resolves its ``param_space``: domains and grids first, then the
    ``sample_from`` functions, each given the trial's config (the other paths, already resolved).
    """
    from ray.tune.search.sample import Function
    from ray.tune.search.variant_generator import generate_variants

    functions = {path: value for path, value in space.items() if isinstance(value, Function)}
    rest = {path: value for path, value in space.items() if path not in functions}
    points = []
    for _ in range(max(1, count)):
        for _, spec in generate_variants({"config": rest}):
            config = dict(spec["config"])
            for path, function in functions.items():
                config[path] = function.sample(config=config)
            points.append({path: config[path] for path in space})
    return points
