"""MLflow tracking: params without secrets, one reopenable job run, nested stage runs."""

from __future__ import annotations

import vlsa
from vlsa.io import tracking
from tests.tracking_db import sqlite_tracking_uri


def test_config_params_are_flat_and_complete():
    cfg = vlsa.load_config("tiny")
    params = tracking.config_params(cfg.to_dict())
    assert params["train.stages.1.lr.vision"] == str(cfg.train.stages[1].lr["vision"])
    assert params["train.stages.0.zero_stage"] == "2" and params["model.llm.init.hidden_size"] == "128"
    assert all(isinstance(v, str) and len(v) <= tracking.MAX_PARAM_LENGTH for v in params.values())


def test_secrets_never_reach_params():
    config = {"store": {"uri": "https://alice:hunter2@mlflow.example.com/x", "secret_key": "hunter2",
                        "api_token": "abc", "password": "pw", "bucket": "s3://data/raw"},
              "long": "x" * 7000}
    params = tracking.config_params(config)
    assert params["store.uri"] == "https://***@mlflow.example.com/x"
    assert params["store.secret_key"] == params["store.api_token"] == params["store.password"] == "***"
    assert params["store.bucket"] == "s3://data/raw" and len(params["long"]) == tracking.MAX_PARAM_LENGTH
    assert not any("hunter2" in v or v == "abc" for v in params.values())


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    assert tracking.tracking_uri("") == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri("") == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert (tmp_path / "mlruns").is_dir()


def test_job_run_is_reopened_by_key_and_stages_nest_under_it(tmp_path):
    uri = sqlite_tracking_uri(tmp_path)
    first = tracking.open_parent_run(uri, "exp", "job", "/runs/job", {"a": "1", "b": "2"})
    again = tracking.open_parent_run(uri, "exp", "job", "/runs/job", {"a": "1", "b": "3", "c": "4"})
    other = tracking.open_parent_run(uri, "exp", "job", "/runs/other", {"a": "1"})
    assert again == first and other != first
    client = tracking.client(uri)
    run = client.get_run(first)
    assert run.data.params == {"a": "1", "b": "2", "c": "4"}  # params are immutable in MLflow
    assert run.data.tags["vlsa.changed_params"] == "b"

    stage = tracking.StageTracker(uri, first, "stage1")
    stage.log_metrics({"loss": 2.5, "lr/projector": 1e-3}, step=1)
    stage.log_metrics({"loss": 2.0, "lr/projector": 1e-3}, step=2)
    resumed = tracking.StageTracker(uri, first, "stage1")  # a restarted worker logs to the same run
    assert resumed.run_id == stage.run_id != tracking.StageTracker(uri, first, "stage2").run_id
    resumed.log_metrics({"loss": 1.5}, step=3)
    stage.flush(), resumed.flush()  # step metrics are queued (asynchronous logging)
    history = client.get_metric_history(stage.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    assert client.get_run(stage.run_id).data.tags[tracking.PARENT_TAG] == first
    tracking.close_run(uri, first, ok=False)
    assert client.get_run(first).info.status == "FAILED"


def test_the_final_model_is_registered_in_a_sqlite_database(tmp_path, monkeypatch):
    """MLflow's registry looks a ``models:/`` source up through the process's tracking URI: a run tracked in a
    SQLite database (the embedded default's) still gets its registered version, and the process's URI is kept."""
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    uri, before = sqlite_tracking_uri(tmp_path), mlflow.get_tracking_uri()
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("final-model"))
    model_id = tracking.log_final_model(uri, run.info.run_id, "demo", str(tmp_path / "ckpt"), register=True)
    (version,) = client.search_model_versions("name='demo'")
    assert version.run_id == run.info.run_id and version.source == f"models:/{model_id}"
    assert mlflow.get_tracking_uri() == before
