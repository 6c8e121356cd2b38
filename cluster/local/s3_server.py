"""A local S3 endpoint: moto in server mode on 127.0.0.1 that accepts signed requests of one key only.

moto accepts any request until told otherwise. The endpoint is started with request authentication
switched on after exactly the three unauthenticated calls that create the run's IAM user, its S3-only
policy and its access key; the key goes to a file only the owner can read. If anyone else got one of
those calls in first, one of ours is refused and the start fails, so a key that works proves nobody
else created one. Anonymous and wrong-key requests are refused from then on, moto's control API is shut
off (``cluster.local.s3_app``) and no CORS header is sent: no browser page needs this endpoint (the MLflow
UI fetches artifacts through its own server).
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cluster.local.processes import find_processes, free_port, http_status, reap, spawn, stop_matching, wait_http
from cluster.local.s3_app import READY_PATH

REGION = "us-east-1"
USER = "vlsa-stack"
# Unauthenticated calls moto allows before it checks signatures: create user, attach policy, create key.
BOOTSTRAP_CALLS = 3
_S3_ONLY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
# Keys for the bootstrap calls: moto does not check them yet, and they keep boto3 from finding real ones.
_PLACEHOLDER = {"aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}


@dataclass
class S3Server:
    """A running endpoint; :meth:`client_env` is what boto3, pyarrow and MLflow need to use it."""

    endpoint: str
    session_id: int
    credentials_file: str
    proc: subprocess.Popen | None = None

    def credentials(self) -> dict[str, str]:
        """The run's access key id and secret (``aws_access_key_id``, ``aws_secret_access_key``)."""
        parser = configparser.ConfigParser()
        parser.read(self.credentials_file)
        return dict(parser["default"])

    def client_env(self) -> dict[str, str]:
        """Endpoint override (boto3, pyarrow via ``vlsa.io.storage``, MLflow), the run's key and region."""
        keys = self.credentials()
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": keys["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": keys["aws_secret_access_key"],
        }

    def make_bucket(self, name: str) -> str:
        """Create a bucket and return ``s3://name``."""
        _client(self.endpoint, "s3", **self.credentials()).create_bucket(Bucket=name)
        return f"s3://{name}"

    def to_json(self) -> dict:
        return {"endpoint": self.endpoint, "session_id": self.session_id, "credentials_file": self.credentials_file}


def start_s3_server(log_path: str | Path, timeout: float = 60.0) -> S3Server:
    """Start the endpoint on a free port, create the run's key (in ``s3_credentials`` next to the log)
    and return once signed requests with it work and anonymous ones are refused."""
    log_path = Path(log_path)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"INITIAL_NO_AUTH_ACTION_COUNT": str(BOOTSTRAP_CALLS), "MOTO_DISABLE_GLOBAL_CORS": "true"})
    argv = [sys.executable, "-m", "cluster.local.s3_app", "127.0.0.1", str(port)]
    proc = spawn(argv, env=env, log_path=log_path)
    server = S3Server(f"http://127.0.0.1:{port}", proc.pid, str(log_path.with_name("s3_credentials")), proc)
    try:
        wait_http(f"{server.endpoint}{READY_PATH}", timeout=timeout, proc=proc, log_path=log_path)
        write_credentials(Path(server.credentials_file), bootstrap_key(server.endpoint))
        check_auth_enforced(server)
    except BaseException:
        stop_s3_server(server)
        raise
    return server


def bootstrap_key(endpoint: str) -> dict[str, str]:
    """The three unauthenticated calls: an IAM user allowed S3 only, and an access key for it."""
    iam = _client(endpoint, "iam", **_PLACEHOLDER)
    iam.create_user(UserName=USER)
    iam.put_user_policy(UserName=USER, PolicyName="s3-only", PolicyDocument=json.dumps(_S3_ONLY))
    key = iam.create_access_key(UserName=USER)["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


def write_credentials(path: Path, keys: dict[str, str]) -> None:
    """An AWS shared-credentials file (usable as ``AWS_SHARED_CREDENTIALS_FILE``), owner-only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("[default]\n" + "".join(f"{name} = {value}\n" for name, value in keys.items()))


def check_auth_enforced(server: S3Server) -> None:
    """Fail the start unless an anonymous request is refused: auth must be on before anyone uses it."""
    status = http_status(f"{server.endpoint}/")
    if status != 403:
        raise RuntimeError(f"S3 endpoint {server.endpoint} answered an anonymous ListBuckets with {status}, not 403")


def _client(endpoint: str, service: str, **keys: str):
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, **keys)


def create_bucket(server: S3Server, name: str) -> str:
    """Create a bucket through boto3 and return ``s3://name``."""
    return server.make_bucket(name)


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
