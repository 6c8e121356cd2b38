"""How a sweep picks its points: Tune's variant generator for grids, Optuna (TPE) for continuous spaces.

Optuna proposes only real domains; paths that copy another path's draw (``points.copy_of``, e.g. one
loss ratio for every stage) are left out of what it sees and filled in by the trial. Loaded by the
sweep only (it imports Ray).
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Domain, Float, Function

from vlsa.config import Config, ConfigError


def is_grid(value: Any) -> bool:
    return isinstance(value, dict) and "grid_search" in value


def uses_optuna(cfg: Config, space: dict[str, Any]) -> bool:
    """Whether the sweep searches with Optuna: ``tune.search``, or for ``auto`` a space with a
    continuous domain and no grid."""
    if cfg.tune.search != "auto":
        return cfg.tune.search == "optuna"
    values = space.values()
    return any(isinstance(v, Float) for v in values) and not any(is_grid(v) for v in values)


def split_space(space: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what Optuna searches, the paths the trial derives from it)."""
    derived = {path: value for path, value in space.items() if isinstance(value, Function)}
    searched = {path: value for path, value in space.items() if path not in derived}
    grids = sorted(path for path, value in searched.items() if is_grid(value))
    if grids or not any(isinstance(v, Domain) for v in searched.values()):
        raise ConfigError(f"tune.search=optuna needs a space of continuous or categorical domains without grids; "
                          f"grid paths: {grids or 'none'}, domains: {sorted(searched)}")
    return searched, derived


class OptunaOverTraining(OptunaSearch):
    """Optuna's TPE; results that lack the metric (a held-out score exists only in a trial's last
    result) are not passed on as intermediate values."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)


def optuna_search(cfg: Config) -> OptunaOverTraining:
    """The searcher of ``tune.metric``/``tune.mode``, seeded by ``train.seed``."""
    return OptunaOverTraining(metric=cfg.tune.metric, mode=cfg.tune.mode, seed=cfg.train.seed)
