"""``ray job submit -- python ray_jobs/train.py`` against a real ``ray start --head``, with an MLflow
server (SQLite, artifacts on S3) and checkpoints in an S3 bucket (moto in server mode)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_helpers import history, small_overrides, stage_run

from tests.services import MLFLOW_ARTIFACT_BUCKET, submit_job
from vlsa.io import storage
from vlsa.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_train_job_on_a_ray_cluster_with_s3_and_mlflow(s3_server, mlflow_server_s3, ray_head, train_demo, train_labels,
                                                       cache_dir):
    from mlflow import MlflowClient

    bucket = s3_server.make_bucket("vlsa-train-job")
    overrides = small_overrides(train_demo, cache_dir, workers=1, labels=train_labels, steps=2)
    overrides += [f"run.storage_path={bucket}/runs", "run.name=job", f"run.mlflow.tracking_uri={mlflow_server_s3}"]
    env = {**s3_server.client_env(), "HF_HUB_OFFLINE": "1"}  # the test endpoint's own key, not a real one
    status, logs = submit_job(ray_head, ["python", "ray_jobs/train.py", "--config", "tiny", *overrides],
                              working_dir=REPO, env=env, timeout=900)
    assert status == "SUCCEEDED", logs[-4000:]
    summary = json.loads(next(line for line in reversed(logs.splitlines()) if line.startswith('{"final_checkpoint"')))

    run = f"{bucket}/runs/job"
    final = ckpt.latest_complete(run)
    assert final is not None and (final.stage_index, final.step, final.final) == (1, 2, True)
    assert summary["final_checkpoint"] == final.uri == f"{run}/01_stage2_step00000002"
    stored = set(storage.list_files(final.uri))
    assert {f"{final.uri}/{ckpt.MANIFEST}", f"{final.uri}/{ckpt.WEIGHTS}", f"{final.uri}/rng/rank_00000.pt"} <= stored

    client = MlflowClient(mlflow_server_s3)
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["final_checkpoint"] == final.uri
    assert parent.data.params["run.storage_path"] == f"{bucket}/runs"
    for stage in ("stage1", "stage2"):
        nested = stage_run(mlflow_server_s3, parent.info.run_id, stage)
        assert sorted(history(mlflow_server_s3, nested.info.run_id, "loss")) == [1, 2]
        assert {"loss_rec", "grad_norm", "tokens_per_s"} <= set(nested.data.metrics)
        artifact = f"reconstruction/{stage}_step00000002.png"
        assert [a.path for a in client.list_artifacts(nested.info.run_id, "reconstruction")] == [artifact]
        in_bucket = [f for f in storage.list_files(f"s3://{MLFLOW_ARTIFACT_BUCKET}") if nested.info.run_id in f]
        assert any(f.endswith(artifact) for f in in_bucket), in_bucket
