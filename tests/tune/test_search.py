"""How a sweep searches: Optuna over continuous spaces (copied per-stage paths derived by the trial), the
variant generator for grids, and a stated budget."""

from __future__ import annotations

import pytest

from tune_spaces import build_space
from vlsa.config import ConfigError, load_config
from vlsa.tune.sweep import describe_search, held_out_search, search_plan


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
    with held_out_search(cfg):  # Tune would insist on the metric in every result
        results = tuner.fit()
    assert not results.errors and len(results) == 4
    assert len({r.config["x"] for r in results}) == 4
    study = searcher._ot_study
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4


def test_asha_counts_optimizer_steps_over_all_stages():
    from vlsa.tune.sweep import scheduler

    asha = scheduler(load_config("tiny", ["tune.scheduler=asha", "tune.metric=loss_lm", "tune.grace_period=40"]))
    assert asha._time_attr == "global_step"
    assert [rung for rung, _ in asha._brackets[0]._rungs][-3:] == [160, 80, 40]  # first rung at the grace period
    assert scheduler(load_config("tiny")) is None


@pytest.mark.integration
def test_trials_at_once_count_the_nodes_the_autoscaler_can_add(local_ray):
    from ray.core.generated.autoscaler_pb2 import ClusterConfig, NodeGroupConfig
    from ray.experimental import internal_kv

    from vlsa.tune.resources import AUTOSCALER_KV, cluster_capacity, max_concurrent

    cfg = load_config("tiny", ["run.num_workers=2", "run.cpus_per_worker=2"])  # 5 CPUs a trial
    namespace, key = AUTOSCALER_KV
    with pytest.raises(RuntimeError, match="one trial needs 5 CPUs"):  # the local instance alone: 4 CPUs
        max_concurrent(cfg, cluster_capacity())
    workers = NodeGroupConfig(name="cpu-workers", min_count=0, max_count=3, resources={"CPU": 8})
    internal_kv._internal_kv_put(key, ClusterConfig(node_group_configs=[workers]).SerializeToString(),
                                 namespace=namespace)
    try:
        assert cluster_capacity()["CPU"] == 24.0
        assert max_concurrent(cfg, cluster_capacity()) == 4
    finally:
        internal_kv._internal_kv_del(key, namespace=namespace)
