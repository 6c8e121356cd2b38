"""A real sweep on the tiny preset: trials are full Ray Train runs, tracked in MLflow."""

from __future__ import annotations

import pytest

from tests.tune.conftest import shrunk
from tune_spaces import build_space
from vlsa.config import load_config
from vlsa.train import tracking as train_tracking
from vlsa.tune.sweep import run_sweep
from vlsa.tune.tracking import ATTEMPTS_TAG, trial_runs


def test_sweep_runs_trials_logs_nested_runs_and_finds_best(tmp_path, local_ray, mlflow_server):
    uri = mlflow_server
    cfg = load_config("tiny", shrunk(tmp_path, uri, "tune.max_concurrent=2", "run.mlflow.experiment=sweep"))
    space = build_space("perceiver", cfg)
    space["tune.variant"]["grid_search"] = ["default", "ex1_no_self_attention"]  # two trials

    outcome = run_sweep(cfg, space, "perceiver-sweep", command="pytest")

    assert len(outcome.results) == 2 and not outcome.results.errors
    losses = {r.config["tune.variant"]: r.metrics["loss"] for r in outcome.results}
    best = min(losses, key=losses.get)
    assert outcome.best_point["tune.variant"] == best
    assert outcome.best_point["model.projector.self_attention"] is (best == "default")
    client = train_tracking.client(uri)
    sweep = client.get_run(outcome.run_id)
    assert sweep.data.tags["best.tune.variant"] == best and sweep.info.status == "FINISHED"
    runs = trial_runs(uri, outcome.run_id)
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags[ATTEMPTS_TAG] == "1"
        variant = run.data.params["tune.variant"]
        assert run.data.params["model.projector.self_attention"] == str(variant == "default")
        history = client.get_metric_history(run.info.run_id, "loss")
        assert len(history) >= 2  # one result per training step at least
        assert history[-1].value == pytest.approx(losses[variant])
        stages = client.search_runs([run.info.experiment_id],
                                    filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
        assert sorted(s.data.tags["vlsa.stage"] for s in stages) == ["stage1", "stage2"]
