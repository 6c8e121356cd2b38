"""How a sweep searches: Optuna over continuous spaces (copied per-stage paths derived by the trial), the
variant generator for grids, and a stated budget."""

from __future__ import annotations

import pytest

from tune_spaces import build_space
from vlsa.config import ConfigError, load_config
from vlsa.tune.sweep import describe_search, search_plan


def test_a_continuous_space_is_searched_by_optuna_over_its_own_domains_only():
    cfg = load_config("tiny", ["tune.metric=loss_lm", "tune.num_samples=6"])
    space = build_space("loss_ratio_continuous", cfg)
    searcher, searched, derived = search_plan(cfg, space)
    assert type(searcher).__name__ == "OptunaOverTraining"
    assert (searcher.metric, searcher.mode) == ("loss_lm", "min")
    assert sorted(searched) == ["train.stages.0.w_lm", "train.stages.0.w_rec"]
    assert sorted(derived) == ["train.stages.1.w_lm", "train.stages.1.w_rec"]
    point = {"train.stages.0.w_lm": 0.3, "train.stages.0.w_rec": 0.9}
    assert derived["train.stages.1.w_rec"].sample(config=point) == 0.9
    assert describe_search(cfg, space) == {"sweep.search": "optuna (TPE)", "sweep.budget": "6 trials"}


def test_a_grid_keeps_the_variant_generator_and_counts_its_points():
    cfg = load_config("tiny", ["tune.metric=loss_lm", "tune.num_samples=2"])
    space = build_space("loss_ratio", cfg)
    assert search_plan(cfg, space) == (None, space, {})
    assert describe_search(cfg, space) == {"sweep.search": "grid", "sweep.budget": "8 trials"}
    with pytest.raises(ConfigError, match="without grids"):
        search_plan(load_config("tiny", ["tune.metric=loss_lm", "tune.search=optuna"]), space)


@pytest.mark.integration
def test_optuna_takes_a_metric_that_only_the_last_result_has(local_ray, tmp_path):
    from ray import tune

    def trainable(config):
        for step in range(3):
            tune.report({"loss": 1.0 + step})
        tune.report({"eval_accuracy": 1.0 - (config["x"] - 0.3) ** 2})

    cfg = load_config("tiny", ["tune.metric=eval_accuracy", "tune.mode=max", "tune.num_samples=4"])
    searcher, searched, _ = search_plan(cfg, {"x": tune.uniform(0.0, 1.0)})
    tuner = tune.Tuner(trainable, param_space=searched,
                       tune_config=tune.TuneConfig(search_alg=searcher, num_samples=4, max_concurrent_trials=1),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="optuna"))
    results = tuner.fit()
    assert not results.errors and len(results) == 4
    assert len({r.config["x"] for r in results}) == 4
    study = searcher._ot_study
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
