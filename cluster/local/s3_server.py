"""A local S3 endpoint: moto in server mode on 127.0.0.1, reached with dummy credentials.

moto accepts any credentials; the dummy values below only keep boto3 and pyarrow from looking for
real ones (and from ever sending real ones to a local endpoint).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cluster.local.processes import find_processes, free_port, reap, spawn, stop_matching, wait_http

DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"


@dataclass
class S3Server:
    """A running endpoint; :meth:`client_env` is what boto3, pyarrow and MLflow need to use it."""

    endpoint: str
    session_id: int
    proc: subprocess.Popen | None = None

    def client_env(self) -> dict[str, str]:
        """Endpoint override (boto3, pyarrow via ``vlsa.io.storage``, MLflow), dummy keys and region."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": REGION,
            **DUMMY_CREDENTIALS,
        }

    def make_bucket(self, name: str) -> str:
        """Create a bucket and return ``s3://name``."""
        return create_bucket(self, name)

    def to_json(self) -> dict:
        return {"endpoint": self.endpoint, "session_id": self.session_id}


def start_s3_server(log_path: str | Path, timeout: float = 60.0) -> S3Server:
    """Start ``python -m moto.server`` on a free port and wait until it answers."""
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = spawn(argv, env={**os.environ, **DUMMY_CREDENTIALS}, log_path=Path(log_path))
    server = S3Server(endpoint=f"http://127.0.0.1:{port}", session_id=proc.pid, proc=proc)
    try:
        wait_http(f"{server.endpoint}/moto-api/", timeout=timeout, proc=proc, log_path=Path(log_path))
    except (RuntimeError, TimeoutError):
        stop_s3_server(server)
        raise
    return server


def create_bucket(server: S3Server, name: str) -> str:
    """Create a bucket through boto3 and return ``s3://name``."""
    import boto3

    env = server.client_env()
    client = boto3.client(
        "s3", endpoint_url=server.endpoint, region_name=REGION,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    client.create_bucket(Bucket=name)
    return f"s3://{name}"


def s3_processes(server: S3Server) -> list:
    """Live processes of this endpoint."""
    return find_processes([server.session_id])


def stop_s3_server(server: S3Server) -> None:
    """Terminate the endpoint; raise if it survives."""
    survivors = stop_matching([server.session_id], grace=5.0)
    reap(server.proc)
    if survivors:
        pids = [p.pid for p in survivors]
        raise RuntimeError(f"S3 endpoint {server.endpoint}: processes still alive after stop: {pids}")
