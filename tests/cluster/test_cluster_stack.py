"""The local dev stack end to end: start, a job through ``ray job submit`` lands in MLflow and S3, stop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.local.jobs import submit_job
from cluster.local.processes import http_status
from cluster.local.stack import read_state, services, stack_processes
from tests.cluster.manifests import ROOT
from tests.services import patched_environ

pytestmark = pytest.mark.integration

JOB = """\
import os, mlflow
assert "MLFLOW_TRACKING_PASSWORD" in os.environ, "credentials come from the head's environment"
mlflow.set_experiment("stack-smoke")
with mlflow.start_run(run_name="smoke") as run:
    mlflow.log_param("batch", 4)
    mlflow.log_metric("loss", 0.25, step=1)
    with open("note.txt", "w") as handle:
        handle.write("from the job")
    mlflow.log_artifact("note.txt")
print("RUN", run.info.run_id)
"""


def _cli(*args: str, state_dir: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "cluster.local", *args, "--state-dir", str(state_dir)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_stack_runs_a_submitted_job_into_mlflow_and_stops_cleanly(tmp_path):
    state_dir = tmp_path / "stack"
    started = _cli("start", "--s3", state_dir=state_dir)
    state = read_state(state_dir)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        assert "MLflow UI" in started.stdout and "ray job submit" in started.stdout
        _check_running_stack(state, state_dir, tmp_path / "job")
    finally:
        stopped = _cli("stop", state_dir=state_dir)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert stack_processes(state) == []
    assert _cli("status", state_dir=state_dir).returncode == 1


def _check_running_stack(state: dict, state_dir: Path, job_dir: Path) -> None:
    head, mlflow_server, s3 = services(state)
    password = Path(mlflow_server.password_file).read_text().strip()
    assert http_status(f"{mlflow_server.uri}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    assert http_status(f"{head.dashboard_url}/api/jobs/") in (401, 403)
    exports = _cli("env", state_dir=state_dir).stdout
    assert "RAY_AUTH_MODE=token" in exports and password not in exports

    job_dir.mkdir()
    (job_dir / "job.py").write_text(JOB)
    status, logs = submit_job(head, "python job.py", working_dir=job_dir)
    assert status == "SUCCEEDED", logs
    run_id = logs.split("RUN ")[-1].split()[0]

    with patched_environ({**mlflow_server.client_env(), **s3.client_env()}):
        from mlflow import MlflowClient

        from vlsa.io import storage

        # explicit URI: an earlier test in the session may have set MLflow's process-wide tracking URI
        run = MlflowClient(tracking_uri=mlflow_server.uri).get_run(run_id)
        assert run.data.metrics == {"loss": 0.25} and run.data.params == {"batch": "4"}
        keys = [k for k in storage.list_files("s3://vlsa/mlflow-artifacts") if run_id in k]
        assert [k.rsplit("/", 1)[-1] for k in keys] == ["note.txt"]
        assert storage.read_bytes(keys[0]) == b"from the job"
