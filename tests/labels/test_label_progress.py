"""The labeling run's MLflow record: one run with params, metrics and the summary, no global state touched."""

from __future__ import annotations

import json
from pathlib import Path

import vlsa
from vlsa.labels.progress import log_to_mlflow
from tests.tracking_db import sqlite_tracking_uri

SUMMARY = {"labeled": 7, "rejected": 2, "images_per_s": 3.25, "busy_fraction": None, "device": "cpu",
           "output_rejects_by_reason": {"image_missing": 1, "truncated": 1}}


def test_summary_is_logged_through_an_explicit_client(tmp_path):
    import mlflow  # here, not at the top: a test process that runs no tracking test never imports it
    from mlflow import MlflowClient

    uri = sqlite_tracking_uri(tmp_path)
    cfg = vlsa.load_config("tiny", [f"run.mlflow.tracking_uri={uri}", "run.name=demo", "label.rows_per_shard=4"])
    before = mlflow.get_tracking_uri()
    run_id = log_to_mlflow(cfg, SUMMARY, {"data": "s3://bucket/train.json", "output": None})
    assert mlflow.get_tracking_uri() == before and mlflow.active_run() is None
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "demo-label" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == cfg.run.mlflow.experiment
    assert run.data.params["data"] == "s3://bucket/train.json" and run.data.params["output"] == "None"
    assert run.data.params["label.rows_per_shard"] == "4"
    assert run.data.metrics == {"labeled": 7.0, "rejected": 2.0, "images_per_s": 3.25,
                                "rejects.image_missing": 1.0, "rejects.truncated": 1.0}
    local = client.download_artifacts(run_id, "label_summary.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == SUMMARY


def test_nothing_is_logged_without_a_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert log_to_mlflow(vlsa.load_config("tiny"), SUMMARY, {}) is None


def test_a_second_run_joins_the_same_experiment(tmp_path):
    from mlflow import MlflowClient

    uri = sqlite_tracking_uri(tmp_path)
    cfg = vlsa.load_config("tiny", [f"run.mlflow.tracking_uri={uri}", "run.mlflow.experiment=labels"])
    first, second = log_to_mlflow(cfg, SUMMARY, {}), log_to_mlflow(cfg, SUMMARY, {})
    client = MlflowClient(uri)
    assert first != second
    assert client.get_run(first).info.experiment_id == client.get_run(second).info.experiment_id
    assert client.get_experiment(client.get_run(first).info.experiment_id).name == "labels"
