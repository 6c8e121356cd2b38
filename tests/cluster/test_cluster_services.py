"""The shared service fixtures really serve: S3 through boto3 and pyarrow, MLflow over HTTP, Ray jobs."""

from __future__ import annotations

import os

import pytest

from cluster.local.processes import http_status
from tests.services import MLFLOW_ARTIFACT_BUCKET, submit_job
from vlsa.io import storage

pytestmark = pytest.mark.integration


def test_s3_object_written_with_boto3_is_read_with_pyarrow(s3_server):
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint
    assert s3_server.endpoint.startswith("http://127.0.0.1:")
    uri = s3_server.make_bucket("services-roundtrip")
    assert uri == "s3://services-roundtrip"
    payload = bytes(range(256)) * 5
    storage.s3_client().put_object(Bucket="services-roundtrip", Key="a/b.bin", Body=payload)

    fs, path = storage.pyarrow_filesystem(f"{uri}/a/b.bin")
    assert type(fs).__name__ == "S3FileSystem"
    with fs.open_input_file(path) as handle:
        assert handle.read() == payload
    assert list(storage.list_files(f"{uri}/a")) == ["s3://services-roundtrip/a/b.bin"]


def test_mlflow_server_logs_and_returns_metrics_and_artifacts(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    assert http_status(f"{mlflow_server}/health") == 200
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.create_run(client.create_experiment("services-local"))
    for step, value in enumerate([3.0, 2.0, 1.25]):
        client.log_metric(run.info.run_id, "loss", value, step=step)
    (tmp_path / "grid.txt").write_text("reconstruction grid")
    client.log_artifact(run.info.run_id, str(tmp_path / "grid.txt"))

    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 3.0), (1, 2.0), (2, 1.25)]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["grid.txt"]
    downloaded = client.download_artifacts(run.info.run_id, "grid.txt", str(tmp_path / "back"))
    assert open(downloaded).read() == "reconstruction grid"


def test_mlflow_server_s3_puts_artifacts_in_the_bucket(mlflow_server_s3, s3_server, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server_s3)
    run = client.create_run(client.create_experiment("services-s3"))
    (tmp_path / "table.csv").write_text("metric,value\nacc,0.5\n")
    client.log_artifact(run.info.run_id, str(tmp_path / "table.csv"))

    keys = [k for k in storage.list_files(f"s3://{MLFLOW_ARTIFACT_BUCKET}/artifacts") if k.endswith("table.csv")]
    assert len(keys) == 1 and run.info.run_id in keys[0]
    assert storage.read_bytes(keys[0]) == b"metric,value\nacc,0.5\n"


def test_ray_head_requires_the_token_and_runs_submitted_jobs(ray_head, tmp_path):
    assert http_status(f"{ray_head.dashboard_url}/api/jobs/") in (401, 403)
    assert ray_head.dashboard_url.startswith("http://127.0.0.1:")
    (tmp_path / "job.py").write_text(
        "import os, ray\n"
        "ray.init()  # joins the head through RAY_ADDRESS, with the token the head's processes hold\n"
        "print('cpus', int(ray.cluster_resources()['CPU']), 'value', os.environ['SERVICES_VALUE'])\n"
    )
    status, logs = submit_job(ray_head, "python job.py", working_dir=tmp_path, env={"SERVICES_VALUE": "v42"})
    assert status == "SUCCEEDED", logs
    assert "cpus 6 value v42" in logs

    status, logs = submit_job(ray_head, ["python", "-c", "print('failing on purpose'); raise SystemExit(3)"])
    assert status == "FAILED" and "failing on purpose" in logs
