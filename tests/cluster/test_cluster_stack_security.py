"""The local stack probed as another process on the same machine would probe it: listening addresses, the
S3 endpoint without the run's key, CORS, file modes, and what a job's environment holds."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from cluster.local.jobs import submit_job
from cluster.local.mlflow_server import mlflow_processes
from cluster.local.stack import read_state, services, stack_processes
from tests.cluster.manifests import ROOT
from tests.services import patched_environ

pytestmark = pytest.mark.integration

# One job checks everything a job can see: the sockets of the Ray processes while an actor runs, a digest
# of each variable it inherited (the admin password must not be among them) and what its MLflow user may do.
JOB = """\
import base64, hashlib, json, os, socket, urllib.error, urllib.request
import mlflow, psutil, ray

def listening(proc):
    found = []
    for conn in proc.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN or (conn.type == socket.SOCK_DGRAM and not conn.raddr):
            found.append([proc.pid, proc.name(), conn.laddr.ip, conn.laddr.port])
    return found

ray.init()

@ray.remote(num_cpus=1)
class Probe:
    def pid(self):
        return os.getpid()

probe = Probe.remote()
raylet = psutil.Process(ray.get(probe.pid.remote())).parent()
sockets = [s for p in [psutil.Process(), *raylet.children()] for s in listening(p)]

mlflow.set_experiment("security-probe")
with mlflow.start_run() as run:
    mlflow.log_metric("x", 1.0)
request = urllib.request.Request(
    os.environ["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/users/create", method="POST",
    data=json.dumps({"username": "intruder", "password": os.urandom(12).hex()}).encode(),
    headers={"Content-Type": "application/json", "Authorization": "Basic " + base64.b64encode(
        (os.environ["MLFLOW_TRACKING_USERNAME"] + ":" + os.environ["MLFLOW_TRACKING_PASSWORD"]).encode()).decode()},
)
try:
    create_user = urllib.request.urlopen(request).status
except urllib.error.HTTPError as err:
    create_user = err.code
digests = sorted(hashlib.sha256(v.encode()).hexdigest() for v in os.environ.values())
report = {"sockets": sockets, "user": os.environ["MLFLOW_TRACKING_USERNAME"], "run": run.info.run_id,
          "create_user": create_user, "env_digests": digests}
print("REPORT " + json.dumps(report))
"""


def _cli(*args: str, state_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "cluster.local", *args, "--state-dir", str(state_dir)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A running stack (with S3) and the report of one probing job; stopped after the module."""
    state_dir = tmp_path_factory.mktemp("secure") / "stack"
    started = _cli("start", "--s3", state_dir=state_dir)
    state = read_state(state_dir)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        job_dir = tmp_path_factory.mktemp("probe-job")
        (job_dir / "job.py").write_text(JOB)
        status, logs = submit_job(services(state)[0], "python job.py", working_dir=job_dir)
        assert status == "SUCCEEDED", logs[-4000:]
        report = json.loads(logs.split("REPORT ", 1)[1].splitlines()[0])
        yield state_dir, state, report
    finally:
        if state is not None:
            stopped = _cli("stop", state_dir=state_dir)
            assert stopped.returncode == 0, stopped.stderr[-3000:]
            assert stack_processes(state) == []


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket bound to loopback
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def listening_sockets(procs: list) -> list[tuple[int, str, str, int]]:
    """(pid, name, ip, port) of every TCP listener and unconnected UDP socket of ``procs``."""
    found = []
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN or (conn.type == socket.SOCK_DGRAM and not conn.raddr):
                    found.append((proc.pid, proc.name(), conn.laddr.ip, conn.laddr.port))
        except psutil.NoSuchProcess:
            continue
    return found


# ---- 1. loopback only ----


def test_is_loopback_tells_loopback_from_other_addresses():
    assert [is_loopback(ip) for ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1")] == [True] * 3
    assert [is_loopback(ip) for ip in ("0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2")] == [False] * 4


def test_every_stack_process_listens_on_loopback_only(stack):
    _, state, report = stack
    head, mlflow, s3 = services(state)
    sockets = listening_sockets(stack_processes(state))
    exposed = [s for s in sockets + [tuple(s) for s in report["sockets"]] if not is_loopback(s[2])]
    assert exposed == [], f"sockets on other addresses than loopback: {exposed}"
    # The scan saw the services it must see (it cannot pass by seeing nothing).
    ports = {s[3] for s in sockets}
    expected = {int(url.rsplit(":", 1)[1]) for url in (head.dashboard_url, mlflow.uri, s3.endpoint, head.address)}
    assert expected <= ports, f"ports {sorted(expected - ports)} not found among the stack's listeners"
    assert len(report["sockets"]) >= 3, "the job saw the sockets of the driver, the actor and the agents"


# ---- 2. S3 needs the run's key ----


def _http(method: str, url: str, headers: dict | None = None, data: bytes | None = None):
    """(status, headers with lower-case names, body)."""
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def test_s3_refuses_anonymous_and_wrong_key_requests(stack):
    import boto3
    from botocore.exceptions import ClientError

    _, state, _ = stack
    s3 = services(state)[2]
    keys = s3.credentials()
    good = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1", **keys)
    good.put_object(Bucket="vlsa", Key="probe/model.bin", Body=b"genuine")

    assert _http("GET", f"{s3.endpoint}/vlsa/probe/model.bin")[0] == 403
    assert _http("PUT", f"{s3.endpoint}/vlsa/probe/model.bin", data=b"forged")[0] == 403
    assert _http("GET", f"{s3.endpoint}/")[0] == 403
    wrong = [
        {**keys, "aws_secret_access_key": "not-the-secret"},
        {"aws_access_key_id": "AKIA" + "MADEUP" * 2 + "0" * 4, "aws_secret_access_key": "made-up"},
    ]
    for bad in wrong:
        client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1", **bad)
        with pytest.raises(ClientError) as err:
            client.put_object(Bucket="vlsa", Key="probe/model.bin", Body=b"forged")
        assert err.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "InvalidAccessKeyId")
    assert good.get_object(Bucket="vlsa", Key="probe/model.bin")["Body"].read() == b"genuine"
    # moto's control API (dump all data, reset, switch auth off) is shut.
    assert _http("GET", f"{s3.endpoint}/moto-api/data.json")[0] == 403
    assert _http("POST", f"{s3.endpoint}/moto-api/reset-auth", data=b"inf")[0] == 403
    assert _http("GET", f"{s3.endpoint}/vlsa/probe/model.bin")[0] == 403  # still enforced after that try


def test_the_shell_exports_reach_s3_through_the_key_file(stack):
    state_dir, state, _ = stack
    s3 = services(state)[2]
    boto3_key = s3.credentials()
    import boto3

    boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1", **boto3_key).put_object(
        Bucket="vlsa", Key="probe/shell.txt", Body=b"from the owner"
    )
    read = (
        "from vlsa.io import storage; fs, path = storage.pyarrow_filesystem('s3://vlsa/probe/shell.txt'); "
        "print(storage.read_bytes('s3://vlsa/probe/shell.txt').decode(), fs.open_input_file(path).read().decode())"
    )
    script = f'eval "$({sys.executable} -m cluster.local env --state-dir {state_dir})"; {sys.executable} -c "{read}"'
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "stale", "AWS_SECRET_ACCESS_KEY": "stale"}  # the exports unset them
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["from", "the", "owner"] * 2
    assert boto3_key["aws_secret_access_key"] not in subprocess.run(
        [sys.executable, "-m", "cluster.local", "env", "--state-dir", str(state_dir)], cwd=ROOT, capture_output=True,
        text=True, timeout=120,
    ).stdout  # fmt: skip


def test_s3_and_mlflow_answer_no_foreign_origin(stack):
    _, state, _ = stack
    _, mlflow, s3 = services(state)
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "PUT"}
    code, headers, _ = _http("OPTIONS", f"{s3.endpoint}/vlsa/probe/model.bin", preflight)
    assert "access-control-allow-origin" not in headers, (code, headers)

    api = f"{mlflow.uri}/api/2.0/mlflow/experiments/search"
    code, headers, _ = _http("OPTIONS", api, {**preflight, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in headers, (code, headers)
    assert _http("POST", api, {"Origin": "http://evil.example", "Content-Type": "application/json"}, b"{}")[0] == 403
    own = mlflow.uri.replace("127.0.0.1", "localhost")
    code, headers, _ = _http("OPTIONS", api, {"Origin": own, "Access-Control-Request-Method": "POST"})
    assert headers.get("access-control-allow-origin") == own, (code, headers)
    # Host names other than its own are refused (DNS rebinding).
    assert _http("GET", api, {"Host": "evil.example"})[0] == 403


def test_mlflow_answers_no_other_local_origin(stack):
    _, state, _ = stack
    mlflow = services(state)[1]
    password = Path(mlflow.password_file).read_text().strip()
    auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}
    post = {**auth, "Content-Type": "application/json"}
    api, body = f"{mlflow.uri}/api/2.0/mlflow/experiments/search", b'{"max_results": 1}'
    port = mlflow.uri.rsplit(":", 1)[1]
    # Pages served by any other local process (MLflow alone admits every localhost port), or sandboxed.
    for other in ("http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9", f"https://localhost:{port}", "null"):
        code, headers, _ = _http("OPTIONS", api, {"Origin": other, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in headers, (other, code, headers)
        assert _http("POST", api, {**post, "Origin": other}, body)[0] == 403, other
        assert _http("GET", f"{mlflow.uri}/", {**auth, "Origin": other})[0] == 403, other
    # The UI's own pages and clients that send no Origin keep working, with the password only.
    for own in (mlflow.uri, mlflow.uri.replace("127.0.0.1", "localhost")):
        assert _http("POST", api, {**post, "Origin": own}, body)[0] == 200, own
    assert _http("POST", api, post, body)[0] == 200
    assert _http("POST", api, {"Content-Type": "application/json", "Origin": mlflow.uri}, body)[0] == 401
    code, _, page = _http("GET", f"{mlflow.uri}/", auth)
    assert code == 200 and b"<html" in page.lower(), code


# ---- 3. private state, and jobs without the admin password ----


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_is_private(stack):
    state_dir, state, _ = stack
    head, mlflow, s3 = services(state)
    assert _mode(state_dir) == 0o700 and _mode(head.private_dir) == 0o700
    assert Path(head.temp_dir).parent == Path(head.private_dir)
    secrets = [state_dir / "stack.json", s3.credentials_file, mlflow.password_file, mlflow.job_password_file,
               head.token_path, Path(mlflow.root) / "flask_secret_key"]  # fmt: skip
    databases = [Path(mlflow.root) / "mlflow.db", Path(mlflow.root) / "basic_auth.db"]
    assert {str(p): _mode(p) for p in secrets + databases} == {str(p): 0o600 for p in secrets + databases}
    # Nothing below the state folder is open to group or others.
    opened = [str(p) for p in Path(state_dir).rglob("*") if _mode(p) & 0o077 and not p.is_symlink()]
    assert opened == []


def test_jobs_get_the_job_user_never_the_admin_password(stack):
    _, state, report = stack
    head, mlflow, _ = services(state)
    admin_password = Path(mlflow.password_file).read_text().strip()
    assert report["user"] == "vlsa-jobs"
    assert hashlib.sha256(admin_password.encode()).hexdigest() not in report["env_digests"]
    assert report["create_user"] == 403, "the job user must not be an admin"
    # No Ray or S3 process (every job's environment comes from the head's) holds it either.
    mlflow_pids = {p.pid for p in mlflow_processes(mlflow)}
    holders = []
    for proc in stack_processes(state):
        try:
            if proc.pid not in mlflow_pids and admin_password in proc.environ().values():
                holders.append((proc.pid, proc.name()))
        except psutil.NoSuchProcess:
            continue
    assert holders == []
    # The job's run is there for the admin to read.
    with patched_environ({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": admin_password}):
        from mlflow import MlflowClient

        assert MlflowClient(tracking_uri=mlflow.uri).get_run(report["run"]).data.metrics == {"x": 1.0}
