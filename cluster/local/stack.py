"""The local dev stack: a Ray head, an MLflow server (sqlite) and optionally an S3 endpoint (moto).

The head is started with the MLflow (and S3) client variables in its environment, so every job driver
and worker inherits them the way pods inherit them from Secrets on Kubernetes: nothing secret is put
in a job's ``runtime_env`` or arguments. Jobs get the non-admin MLflow user and the run's S3 key, never
the MLflow admin password. The state folder is private (0700) and everything in it is owner-only; the
state file records what was started so that ``stop`` ends exactly those processes, from any shell.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cluster.local.mlflow_server import ADMIN_USER, MlflowServer, mlflow_processes, start_mlflow_server
from cluster.local.mlflow_server import wait_mlflow_server
from cluster.local.processes import reap, stop_matching
from cluster.local.ray_head import RayHead, head_markers, head_processes, remove_private_dirs, start_ray_head
from cluster.local.s3_server import REGION, S3Server, s3_processes, start_s3_server

STATE_FILE = "stack.json"
BUCKET = "vlsa"


def default_state_dir() -> Path:
    """Where the stack keeps its databases, logs and state unless told otherwise."""
    return Path(os.environ.get("VLSA_STACK_DIR", Path.home() / ".cache" / "vlsa-stack"))


def start_stack(state_dir: str | Path, s3: bool = False, auth: bool = True, num_cpus: int = 6) -> dict:
    """Start the services and write the state file; returns the state. Refuses to start twice."""
    state_dir = private_dir(state_dir)
    if (state_dir / STATE_FILE).exists():
        raise RuntimeError(f"a stack is already recorded in {state_dir / STATE_FILE}: stop it first")
    s3_server = start_s3_server(state_dir / "s3.log") if s3 else None
    started: list = [s3_server] if s3_server else []
    try:
        artifacts = s3_server.make_bucket(BUCKET) + "/mlflow-artifacts" if s3_server else None
        s3_env = s3_server.client_env() if s3_server else {}
        # MLflow boots in the background while the Ray head starts: the two dominate start-up time.
        mlflow = start_mlflow_server(state_dir / "mlflow", artifacts, auth=auth, env=s3_env, wait=False)
        started.append(mlflow)
        head = start_ray_head(num_cpus=num_cpus, env={**s3_env, **mlflow.job_env()})
        started.append(head)
        wait_mlflow_server(mlflow)
    except BaseException:
        _stop_all(started)
        raise
    return _write_state(state_dir, head, mlflow, s3_server)


def private_dir(path: str | Path) -> Path:
    """``path`` as a folder only its owner can enter (created so, or narrowed if it is ours)."""
    path = Path(path).resolve()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise RuntimeError(f"state folder {path} belongs to another user: choose one of your own")
    path.chmod(0o700)
    return path


def _write_state(state_dir: Path, head: RayHead, mlflow: MlflowServer, s3: S3Server | None) -> dict:
    state = {"ray": head.to_json(), "mlflow": mlflow.to_json(), "s3": s3.to_json() if s3 else None}
    fd = os.open(state_dir / STATE_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle, indent=2)
    return state


def read_state(state_dir: str | Path) -> dict | None:
    """The recorded state, or None when no stack is recorded there."""
    path = Path(state_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def services(state: dict) -> tuple[RayHead, MlflowServer, S3Server | None]:
    """The service objects a state describes."""
    s3 = S3Server(**state["s3"]) if state.get("s3") else None
    return RayHead(**state["ray"]), MlflowServer(**state["mlflow"]), s3


def stack_processes(state: dict) -> list:
    """Every live process of the recorded stack (empty once it is stopped)."""
    head, mlflow, s3 = services(state)
    return head_processes(head) + mlflow_processes(mlflow) + (s3_processes(s3) if s3 else [])


def stop_stack(state_dir: str | Path) -> bool:
    """Stop what the state file names and remove it; False when nothing was recorded."""
    state = read_state(state_dir)
    if state is None:
        return False
    head, mlflow, s3 = services(state)
    _stop_all([head, mlflow, s3])
    (Path(state_dir) / STATE_FILE).unlink()
    return True


def _stop_all(started: list) -> None:
    """Stop every service at once (one SIGTERM wave, one grace period); raise naming any survivor."""
    started = [s for s in started if s is not None]
    markers = [m for s in started if isinstance(s, RayHead) for m in head_markers(s)]
    survivors = stop_matching([s.session_id for s in started], markers, grace=3.0)
    for service in started:
        reap(service.proc)  # a child of this process when stopping after a failed start
        if isinstance(service, RayHead):
            remove_private_dirs(service)
    if survivors:
        raise RuntimeError(f"dev stack: processes still alive after stop: {[p.pid for p in survivors]}")


def client_env(state: dict) -> dict[str, str]:
    """Shell variables for using the stack from a terminal: Ray job CLI, MLflow client and S3 (no secret
    values: the S3 key is read by boto3 and pyarrow from its 0600 credentials file)."""
    head, mlflow, s3 = services(state)
    env = {**head.auth_env, "RAY_API_SERVER_ADDRESS": head.dashboard_url, "MLFLOW_TRACKING_URI": mlflow.uri}
    if mlflow.password_file:
        env["MLFLOW_TRACKING_USERNAME"] = ADMIN_USER
    if s3:
        env.update({"AWS_ENDPOINT_URL": s3.endpoint, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint})
        env.update({"AWS_DEFAULT_REGION": REGION, "AWS_SHARED_CREDENTIALS_FILE": s3.credentials_file})
    return env
