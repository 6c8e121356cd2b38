"""A local ``mlflow server``: sqlite backend store, artifacts proxied to a folder or an ``s3://`` prefix.

With ``auth=True`` the server runs the basic-auth app; the admin password and the Flask secret key are
generated into files only the owner can read and handed to the server through the environment, so they
never appear on a command line or in a config file. Once it answers, a non-admin user for jobs
(``JOB_USER``, as on Kubernetes) is created with its own generated password: jobs get that one, never the
admin's. The server answers only its own Host names (127.0.0.1 / localhost on its port) and only its own
browser origins: MLflow itself would also admit localhost origins on any port, so the app runs behind an
origin gate (:mod:`cluster.local.mlflow_gate`) that refuses every other ``Origin``. Its files (sqlite
databases included) are created owner-only.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cluster.local.processes import find_processes, free_port, reap, spawn, stop_matching, wait_http

REPO = Path(__file__).resolve().parents[2]
GATED_MLFLOW = [sys.executable, "-m", "cluster.local.mlflow_gate"]
"""``mlflow`` with the origin gate in front of its app (run from the repository, see ``_server_env``)."""
ADMIN_USER = "admin"
JOB_USER = "vlsa-jobs"


@dataclass
class MlflowServer:
    """A running server: ``uri`` is the tracking URI; ``password_file`` is set when auth is on."""

    uri: str
    root: str
    session_id: int
    artifacts_destination: str
    password_file: str | None = None
    job_password_file: str | None = None
    proc: subprocess.Popen | None = None

    def client_env(self) -> dict[str, str]:
        """Variables an admin tracking client needs (credentials only when auth is on): for the owner's
        shell and tests, never for jobs (see :meth:`job_env`)."""
        return self._env(ADMIN_USER, self.password_file)

    def job_env(self) -> dict[str, str]:
        """Variables a job needs: the non-admin job user (credentials only when auth is on)."""
        return self._env(JOB_USER, self.job_password_file)

    def _env(self, user: str, password_file: str | None) -> dict[str, str]:
        env = {"MLFLOW_TRACKING_URI": self.uri}
        if password_file:
            env["MLFLOW_TRACKING_USERNAME"] = user
            env["MLFLOW_TRACKING_PASSWORD"] = Path(password_file).read_text().strip()
        return env

    def to_json(self) -> dict:
        keys = ("uri", "root", "session_id", "artifacts_destination", "password_file", "job_password_file")
        return {k: getattr(self, k) for k in keys}


def write_private(path: Path, text: str) -> Path:
    """``text`` in a file readable by the owner only (created so, never widened to 0644 first)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)  # a file that existed before keeps its old mode through O_CREAT
    return path


def write_secret(path: Path) -> Path:
    """A random secret in a file readable by the owner only."""
    return write_private(path, secrets.token_urlsafe(24))


def _auth_env(root: Path) -> dict[str, str]:
    # The auth app's user database lives next to the tracking database, not in the working directory.
    ini = write_private(
        root / "basic_auth.ini",
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\nadmin_username = {ADMIN_USER}\n",
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": write_secret(root / "admin_password").read_text(),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": write_secret(root / "flask_secret_key").read_text(),
    }


def server_args(root: Path, port: int, artifacts_destination: str, auth: bool) -> list[str]:
    """The ``mlflow server`` command line (no secrets on it)."""
    args = [*GATED_MLFLOW, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    args += ["--artifacts-destination", artifacts_destination, "--host", "127.0.0.1", "--port", str(port)]
    own = [f"127.0.0.1:{port}", f"localhost:{port}"]
    args += ["--workers", "1", "--allowed-hosts", ",".join(own)]
    # Only the UI's own pages may call the API from a browser (the gate enforces exactly this list).
    args += ["--cors-allowed-origins", ",".join(f"http://{host}" for host in own)]
    return args + (["--app-name", "basic-auth"] if auth else [])


def _server_env(env: dict[str, str]) -> dict[str, str]:
    # The server runs in its own folder: the gate's module is found through PYTHONPATH.
    path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start_mlflow_server(
    root: str | Path, artifacts_destination: str | None = None, auth: bool = False, env: dict[str, str] | None = None,
    wait: bool = True, timeout: float = 180.0,
) -> MlflowServer:  # fmt: skip
    """Start a server whose files live under ``root``; ``env`` adds variables (e.g. an S3 endpoint).

    With ``wait=False`` it returns at once; call :func:`wait_mlflow_server` before use.
    """
    root = Path(root).resolve()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    artifacts_destination = artifacts_destination or str(root / "artifacts")
    port = free_port()
    full_env = _server_env({**os.environ, **(env or {})})
    if auth:
        full_env.update(_auth_env(root))
    log_path = root / "server.log"
    proc = spawn(server_args(root, port, artifacts_destination, auth), env=full_env, log_path=log_path, cwd=str(root))
    server = MlflowServer(
        uri=f"http://127.0.0.1:{port}", root=str(root), session_id=proc.pid,
        artifacts_destination=artifacts_destination, password_file=str(root / "admin_password") if auth else None,
        job_password_file=str(write_secret(root / "jobs_password")) if auth else None, proc=proc,
    )  # fmt: skip
    if wait:
        wait_mlflow_server(server, timeout)
    return server


def wait_mlflow_server(server: MlflowServer, timeout: float = 180.0) -> None:
    """Block until ``/health`` answers and the job user exists; stop the server and raise (with its log)
    when it does not."""
    try:
        wait_http(f"{server.uri}/health", timeout=timeout, proc=server.proc, log_path=Path(server.root) / "server.log")
        if server.job_password_file:
            create_user(server, JOB_USER, Path(server.job_password_file).read_text().strip())
    except BaseException:
        stop_mlflow_server(server)
        raise


def create_user(server: MlflowServer, user: str, password: str) -> None:
    """Create a non-admin user through the auth API, as the admin (the body, not the URL, holds the password)."""
    admin = base64.b64encode(f"{ADMIN_USER}:{Path(server.password_file).read_text().strip()}".encode()).decode()
    request = urllib.request.Request(
        f"{server.uri}/api/2.0/mlflow/users/create", method="POST",
        data=json.dumps({"username": user, "password": password}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Basic {admin}"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        if response.status != 200:
            raise RuntimeError(f"MLflow {server.uri}: creating user {user!r} answered {response.status}")


def mlflow_processes(server: MlflowServer) -> list:
    """Live processes of this server (its session: the CLI, uvicorn and its workers)."""
    return find_processes([server.session_id])


def stop_mlflow_server(server: MlflowServer, grace: float = 5.0) -> None:
    """Terminate the server's process group; raise if anything survives."""
    survivors = stop_matching([server.session_id], grace=grace)
    reap(server.proc)
    if survivors:
        pids = [p.pid for p in survivors]
        raise RuntimeError(f"MLflow server {server.uri}: processes still alive after stop: {pids}")
