"""A single-node Ray head started with ``ray start --head``: token auth on, dashboard on 127.0.0.1 only.

Each head gets its own short temp dir (Unix socket paths are limited to about 100 bytes) and its own
free ports, so several heads can run side by side on one machine. Stopping a head terminates only the
processes of that head (its session, its temp dir, its GCS address); ``ray stop`` is not used because
it stops every Ray process of the user, including clusters that other programs started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster.local.processes import find_processes, free_port, http_status, stop_matching

RAY_BIN = str(Path(sys.executable).with_name("ray"))


@dataclass
class RayHead:
    """A running head. ``address`` is the GCS address, ``dashboard_url`` is what ``ray job submit`` takes."""

    address: str
    dashboard_url: str
    temp_dir: str
    token_path: str
    session_id: int
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def auth_env(self) -> dict[str, str]:
        """Variables a client process needs to talk to this head (the token is read from a 0600 file)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path}

    def client_env(self) -> dict[str, str]:
        """A full environment for a Ray CLI client of this head."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
        env.update(self.auth_env)
        env["RAY_API_SERVER_ADDRESS"] = self.dashboard_url
        return env

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("address", "dashboard_url", "temp_dir", "token_path", "session_id")}


def write_token(path: Path) -> Path:
    """A fresh random token in a file only the owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path


def start_args(temp_dir: str, num_cpus: int, ports: dict[str, int]) -> list[str]:
    """``ray start --head`` arguments with every listening port chosen, so parallel heads never collide."""
    args = [RAY_BIN, "start", "--head", "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir]
    args += ["--num-cpus", str(num_cpus), "--num-gpus", "0", "--include-dashboard", "true"]
    args += ["--dashboard-host", "127.0.0.1", "--disable-usage-stats", "--log-style", "record", "--log-color", "false"]
    for name, port in ports.items():
        args += [f"--{name}", str(port)]
    return args


def _ports() -> dict[str, int]:
    names = ["port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port", "node-manager-port",
             "object-manager-port"]  # fmt: skip
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(names):
        ports = {name: free_port() for name in names}
    return ports


def start_ray_head(num_cpus: int = 6, env: dict[str, str] | None = None, timeout: float = 120.0) -> RayHead:
    """Start a head (blocks until ``ray start`` returns and the dashboard answers); ``env`` adds variables
    that the head and therefore every job driver and worker inherit (e.g. ``MLFLOW_TRACKING_URI``)."""
    temp_dir = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # short: socket paths live below it
    token_path = write_token(Path(temp_dir) / "auth_token")
    ports = _ports()
    full_env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    full_env.update(env or {})
    full_env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path), "RAY_USAGE_STATS_ENABLED": "0"})
    # `python` in a job's entrypoint must be this interpreter (the one with the project installed).
    full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full_env.get("PATH", "")])
    proc = subprocess.Popen(
        start_args(temp_dir, num_cpus, ports), env=full_env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    head = RayHead(
        address="", dashboard_url=f"http://127.0.0.1:{ports['dashboard-port']}", temp_dir=temp_dir,
        token_path=str(token_path), session_id=proc.pid, extra_env=dict(env or {}),
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_ray_head(head)
        raise TimeoutError(f"ray start did not return within {timeout:.0f} s (temp dir {temp_dir})")
    if proc.returncode != 0:
        stop_ray_head(head)
        raise RuntimeError(f"ray start failed with exit code {proc.returncode}:\n{output[-4000:]}")
    head.address = (Path(temp_dir) / "ray_current_cluster").read_text().strip()
    _wait_dashboard(head, timeout)
    return head


def _wait_dashboard(head: RayHead, timeout: float) -> None:
    """The Jobs API is served by the dashboard, which can come up a moment after ``ray start`` returns."""
    deadline = time.monotonic() + timeout
    token = Path(head.token_path).read_text().strip()
    while time.monotonic() < deadline:
        if http_status(f"{head.dashboard_url}/api/version", {"Authorization": f"Bearer {token}"}) == 200:
            return
        time.sleep(0.25)
    stop_ray_head(head)
    raise TimeoutError(f"Ray dashboard {head.dashboard_url} did not answer within {timeout:.0f} s")


def head_processes(head: RayHead) -> list:
    """Every live process that belongs to this head (none once it is stopped)."""
    return find_processes([head.session_id], _markers(head))


def _markers(head: RayHead) -> list[str]:
    # The client server's command line names only the GCS address, the others name the temp dir.
    return [head.temp_dir, head.address] if head.address else [head.temp_dir]


def stop_ray_head(head: RayHead, grace: float = 3.0, remove_temp_dir: bool = True) -> None:
    """Terminate this head's processes only (SIGTERM, then SIGKILL after ``grace`` s); raise if any survive.

    A local head holds nothing worth a long drain: GCS and raylet may take 10 s or more to honour
    SIGTERM, so a short grace keeps test teardown fast, as ``ray stop --force`` would.
    """
    survivors = stop_matching([head.session_id], _markers(head), grace=grace)
    if survivors:
        names = ", ".join(f"{p.pid}" for p in survivors)
        raise RuntimeError(f"Ray head {head.address or head.temp_dir}: processes still alive after stop: {names}")
    if remove_temp_dir:
        shutil.rmtree(head.temp_dir, ignore_errors=True)


def load_head(data: dict) -> RayHead:
    """The inverse of :meth:`RayHead.to_json` (used by the dev stack's state file)."""
    return RayHead(**data)
