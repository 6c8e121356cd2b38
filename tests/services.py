"""Real local services for integration tests, as session-scoped pytest fixtures.

- ``s3_server``: moto in server mode on 127.0.0.1. While it runs, the test process has
  ``AWS_ENDPOINT_URL``, dummy keys and ``AWS_DEFAULT_REGION`` set (restored afterwards), so boto3 and
  ``vlsa.io.storage`` (pyarrow included) reach it. ``s3_server.make_bucket("name") -> "s3://name"``;
  ``s3_server.client_env()`` is the same set of variables, to hand to subprocesses or Ray jobs.
- ``mlflow_server``: a real ``mlflow server`` (sqlite, artifacts proxied to a local folder); the value is
  its tracking URI. ``mlflow_server_s3``: the same with artifacts in ``s3://{MLFLOW_ARTIFACT_BUCKET}``.
- ``ray_head``: ``ray start --head`` with token auth and a private temp dir; the value is a
  :class:`cluster.local.RayHead` (``address``, ``dashboard_url``, ``auth_env``, ``client_env()``).
  ``submit_job(ray_head, "python -c ...", working_dir=None, env=None) -> (status, logs)`` runs the real
  ``ray job submit`` CLI; ``env`` becomes the job's ``runtime_env`` variables (no secrets there).

Every fixture stops exactly the processes it started and fails the session if any survive.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import pytest

from cluster.local.jobs import submit_job
from cluster.local.mlflow_server import mlflow_processes, start_mlflow_server, stop_mlflow_server
from cluster.local.ray_head import RayHead, head_processes, start_ray_head, stop_ray_head
from cluster.local.s3_server import S3Server, s3_processes, start_s3_server, stop_s3_server

__all__ = ["MLFLOW_ARTIFACT_BUCKET", "mlflow_server", "mlflow_server_s3", "ray_head", "s3_server", "submit_job"]

MLFLOW_ARTIFACT_BUCKET = "mlflow-artifacts"
# Variables that would send S3 calls elsewhere than the local endpoint, or with real credentials.
_S3_UNSET = ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE")


@contextlib.contextmanager
def patched_environ(values: dict[str, str], unset: tuple[str, ...] = ()) -> Iterator[None]:
    """Set and unset variables of this process, restoring the previous values on exit."""
    saved = {key: os.environ.get(key) for key in (*values, *unset)}
    os.environ.update(values)
    for key in unset:
        os.environ.pop(key, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """A moto S3 endpoint on 127.0.0.1; the process environment points at it while it runs."""
    server = start_s3_server(tmp_path_factory.mktemp("s3") / "moto.log")
    try:
        with patched_environ(server.client_env(), unset=_S3_UNSET):
            yield server
    finally:
        stop_s3_server(server)
    assert not s3_processes(server), "moto server still running"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """Tracking URI of an ``mlflow server`` with a sqlite store and local artifacts."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server.uri
    finally:
        stop_mlflow_server(server)
    assert not mlflow_processes(server), "mlflow server still running"


@pytest.fixture(scope="session")
def mlflow_server_s3(s3_server, tmp_path_factory) -> Iterator[str]:
    """Tracking URI of an ``mlflow server`` whose artifacts go to the moto bucket ``MLFLOW_ARTIFACT_BUCKET``."""
    bucket = s3_server.make_bucket(MLFLOW_ARTIFACT_BUCKET)
    root = tmp_path_factory.mktemp("mlflow-s3")
    server = start_mlflow_server(root, artifacts_destination=f"{bucket}/artifacts", env=s3_server.client_env())
    try:
        yield server.uri
    finally:
        stop_mlflow_server(server)
    assert not mlflow_processes(server), "mlflow server still running"


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    """A token-authenticated Ray head (6 logical CPUs, dashboard on 127.0.0.1) for ``ray job submit``."""
    head = start_ray_head(num_cpus=6)
    try:
        yield head
    finally:
        stop_ray_head(head)
    assert not head_processes(head), "Ray head processes still running"
