"""MLflow as a training team reads it, against a real ``mlflow server``: model-training experiments,
queued step metrics, the data as a dataset input, per-node system metrics, the final model registered."""

from __future__ import annotations

import json

import pytest

from vlsa.io import tracking
from vlsa.io.system_metrics import NodeMonitor

pytestmark = pytest.mark.integration


def stage_tracker(uri: str, experiment: str):
    parent = tracking.open_parent_run(uri, experiment, "job", f"/runs/{experiment}", {"a": "1"})
    return parent, tracking.StageTracker(uri, parent, "stage1")


def test_experiments_are_created_as_model_training_and_a_chosen_kind_is_kept(mlflow_server):
    client = tracking.client(mlflow_server)
    created = tracking.experiment_id(client, "kind-new")
    assert client.get_experiment(created).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    untagged = client.create_experiment("kind-untagged")  # made before this version: gets the kind
    assert tracking.experiment_id(client, "kind-untagged") == untagged
    assert client.get_experiment(untagged).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    chosen = client.create_experiment("kind-chosen", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    tracking.experiment_id(client, "kind-chosen")
    assert client.get_experiment(chosen).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"


def test_step_metrics_are_queued_and_all_reach_the_server_on_finish(mlflow_server):
    _, tracker = stage_tracker(mlflow_server, "queued")
    for step in range(1, 201):
        tracker.log_metrics({"loss": 1.0 / step, "lr/llm": 0.1}, step)
    tracker.finish()
    assert tracker.pending == []
    client = tracking.client(mlflow_server)
    history = client.get_metric_history(tracker.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 201))
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_the_stage_data_is_a_dataset_input_with_its_digest(mlflow_server, tmp_path):
    _, tracker = stage_tracker(mlflow_server, "datasets")
    manifest = tmp_path / "labels" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text('{"shards": []}')
    tracker.log_dataset("stage1-labels", str(manifest), "ab" * 32, profile=json.dumps({"samples": 4}))
    inputs = tracking.client(mlflow_server).get_run(tracker.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert (dataset.name, dataset.digest) == ("stage1-labels", ("ab" * 32)[:36])
    assert json.loads(dataset.source)["uri"] == str(manifest) and json.loads(dataset.profile) == {"samples": 4}
    assert {(t.key, t.value) for t in inputs[0].tags} == {("mlflow.data.context", "train")}


def test_each_node_logs_system_metrics_under_its_name(mlflow_server):
    _, tracker = stage_tracker(mlflow_server, "system")
    nodes = ("node-0-a", "node-1-b")
    monitors = [NodeMonitor(mlflow_server, tracker.run_id, node, interval_s=0.5).start() for node in nodes]
    for monitor in monitors:
        monitor.stop()
    metrics = tracking.client(mlflow_server).get_run(tracker.run_id).data.metrics
    for node in nodes:
        assert 0.0 <= metrics[f"system/{node}/cpu_utilization_percentage"] <= 100.0 * 64
        assert metrics[f"system/{node}/system_memory_usage_megabytes"] > 0


def test_the_final_checkpoint_is_a_registered_model_of_its_run_once(mlflow_server):
    client = tracking.client(mlflow_server)
    parent, _ = stage_tracker(mlflow_server, "models")
    checkpoint = "s3://bucket/runs/job/01_stage2_step00000002"
    model_id = tracking.log_final_model(mlflow_server, parent, "vlsa-test-model", checkpoint, register=True)
    assert tracking.log_final_model(mlflow_server, parent, "vlsa-test-model", checkpoint, register=True) == model_id
    model = client.get_logged_model(model_id)
    assert model.source_run_id == parent and model.tags["vlsa.checkpoint"] == checkpoint
    assert str(model.status).endswith("READY")
    assert [a.path for a in client.list_logged_model_artifacts(model_id)] == ["checkpoint.json"]
    assert [m.model_id for m in client.get_run(parent).outputs.model_outputs] == [model_id]
    (version,) = client.search_model_versions("name = 'vlsa-test-model'")
    assert (version.run_id, version.source) == (parent, f"models:/{model_id}")
