"""Real local services for integration tests, as session-scoped pytest fixtures.

- ``s3_server``: moto in server mode on 127.0.0.1, refusing anonymous requests and any key but the one it
  created at start. While it runs, the test process has ``AWS_ENDPOINT_URL``, that key and
  ``AWS_DEFAULT_REGION`` set (restored afterwards), so boto3 and ``vlsa.io.storage`` (pyarrow included)
  reach it. ``s3_server.make_bucket("name") -> "s3://name"``;
  ``s3_server.endpoint``; ``s3_server.client_env()`` is the same set of variables, for subprocesses or jobs.
- ``mlflow_server``: a real ``mlflow server`` (sqlite, artifacts proxied to a local folder); the value is
  its tracking URI. ``mlflow_server_s3``: the same with artifacts in ``s3://{MLFLOW_ARTIFACT_BUCKET}/artifacts``.
- ``ray_head``: ``ray start --head`` with token auth, 6 logical CPUs and a private temp dir; the value is a
  :class:`cluster.local.RayHead` (``address``, ``dashboard_url``, ``auth_env``, ``client_env()``). It
  inherits this process's environment at start.
  ``submit_job(ray_head, "python -c ...", working_dir=None, env=None) -> (status, logs)`` runs the real
  ``ray job submit`` CLI; ``env`` becomes the job's ``runtime_env`` variables (no secrets there).

The first of these fixtures a session sets up launches every service that the session's selected tests
use, all at once, so their start-ups overlap (each takes several seconds of interpreter start-up).
Every fixture stops exactly the processes it started and fails the session if any survive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from cluster.local.jobs import submit_job
from cluster.local.mlflow_server import MlflowServer, mlflow_processes, start_mlflow_server, stop_mlflow_server
from cluster.local.mlflow_server import wait_mlflow_server
from cluster.local.ray_head import RayHead, RayStartError, head_processes, start_ray_head, stop_ray_head, wait_ray_head
from cluster.local.s3_server import S3Server, s3_processes, start_s3_server, stop_s3_server
from vlsa.io.environ import patched_environ

__all__ = [
    "MLFLOW_ARTIFACT_BUCKET", "mlflow_server", "mlflow_server_s3", "patched_environ", "ray_head", "s3_server",
    "submit_job",
]  # fmt: skip

MLFLOW_ARTIFACT_BUCKET = "mlflow-artifacts"
SERVICES = ("s3_server", "mlflow_server", "mlflow_server_s3", "ray_head")
# Variables that would send S3 calls elsewhere than the local endpoint, or with real credentials.
_S3_UNSET = ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE")


class ServicePool:
    """Services launched ahead of their fixtures; a fixture takes its service and owns it from then on."""

    def __init__(self, root: Path):
        self.root = root
        self.started: dict[str, S3Server | MlflowServer | RayHead] = {}
        self.taken: set[str] = set()

    def launch(self, names: set[str]) -> None:
        """Start the named services without waiting for them (S3 first: the MLflow S3 server needs a bucket)."""
        if "mlflow_server_s3" in names or "s3_server" in names:
            self._launch("s3_server", lambda: start_s3_server(self.root / "s3" / "moto.log"))
        if "mlflow_server_s3" in names:
            self._launch("mlflow_server_s3", self._mlflow_s3)
        if "mlflow_server" in names:
            self._launch("mlflow_server", lambda: start_mlflow_server(self.root / "mlflow", wait=False))
        if "ray_head" in names:
            self._launch("ray_head", lambda: start_ray_head(num_cpus=6, wait=False))

    def _launch(self, name: str, start) -> None:
        if name not in self.started:
            self.started[name] = start()

    def _mlflow_s3(self) -> MlflowServer:
        s3 = self.started["s3_server"]
        artifacts = s3.make_bucket(MLFLOW_ARTIFACT_BUCKET) + "/artifacts"
        return start_mlflow_server(self.root / "mlflow-s3", artifacts, env=s3.client_env(), wait=False)

    def take(self, name: str):
        """The ready service (launched now if it was not); the caller stops it."""
        self.launch({name})
        service = self.started[name]
        self.taken.add(name)
        if isinstance(service, MlflowServer):
            wait_mlflow_server(service)
        elif isinstance(service, RayHead):
            try:
                wait_ray_head(service)
            except RayStartError:  # an overloaded machine; the blocking start retries on its own
                service = self.started[name] = start_ray_head(num_cpus=6)
        return service

    def close(self) -> None:
        """Stop services no fixture took (their tests were skipped after the launch)."""
        stops = {S3Server: stop_s3_server, MlflowServer: stop_mlflow_server, RayHead: stop_ray_head}
        for name, service in self.started.items():
            if name not in self.taken:
                stops[type(service)](service)


@pytest.fixture(scope="session")
def _service_pool(request, tmp_path_factory) -> Iterator[ServicePool]:
    pool = ServicePool(tmp_path_factory.mktemp("services"))
    wanted = {name for item in request.session.items for name in getattr(item, "fixturenames", ()) if name in SERVICES}
    try:
        pool.launch(wanted)
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="session")
def s3_server(_service_pool) -> Iterator[S3Server]:
    """A moto S3 endpoint on 127.0.0.1; the process environment points at it while it runs."""
    server = _service_pool.take("s3_server")
    try:
        with patched_environ(server.client_env(), unset=_S3_UNSET):
            yield server
    finally:
        stop_s3_server(server)
    assert not s3_processes(server), "moto server still running"


@pytest.fixture(scope="session")
def mlflow_server(_service_pool) -> Iterator[str]:
    """Tracking URI of an ``mlflow server`` with a sqlite store and local artifacts."""
    server = _service_pool.take("mlflow_server")
    try:
        yield server.uri
    finally:
        stop_mlflow_server(server)
    assert not mlflow_processes(server), "mlflow server still running"


@pytest.fixture(scope="session")
def mlflow_server_s3(s3_server, _service_pool) -> Iterator[str]:
    """Tracking URI of an ``mlflow server`` whose artifacts go to the moto bucket ``MLFLOW_ARTIFACT_BUCKET``."""
    server = _service_pool.take("mlflow_server_s3")
    try:
        yield server.uri
    finally:
        stop_mlflow_server(server)
    assert not mlflow_processes(server), "mlflow server still running"


@pytest.fixture(scope="session")
def ray_head(_service_pool) -> Iterator[RayHead]:
    """A token-authenticated Ray head (6 logical CPUs, dashboard on 127.0.0.1) for ``ray job submit``."""
    head = _service_pool.take("ray_head")
    try:
        yield head
    finally:
        stop_ray_head(head)
    assert not head_processes(head), "Ray head processes still running"
