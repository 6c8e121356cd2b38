"""A single-node Ray head started with ``ray start --head``: token auth on, dashboard on 127.0.0.1 only.

Each head gets its own short temp dir (Unix socket paths are limited to about 100 bytes) and its own
free ports, so several heads can run side by side on one machine. Ray makes its temp dir world-writable
(it is meant to be shared between users), so it lives one level inside a private (0700) folder that also
holds the token: other local users reach none of the sockets, logs or unpacked job code. Every Ray
process listens on 127.0.0.1 only (see ``LOOPBACK_ONLY``). Stopping a head terminates only the
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
from dataclasses import dataclass
from pathlib import Path

from cluster.local.processes import find_processes, free_port, http_status, reap, spawn, stop_matching

RAY_BIN = str(Path(sys.executable).with_name("ray"))


@dataclass
class RayHead:
    """A running head. ``address`` is the GCS address, ``dashboard_url`` is what ``ray job submit`` takes."""

    address: str
    dashboard_url: str
    temp_dir: str
    token_path: str
    session_id: int
    private_dir: str = ""  # the 0700 folder holding temp_dir and the token; removed at stop
    proc: subprocess.Popen | None = None  # the `ray start` process, while this process waits for it

    @property
    def auth_env(self) -> dict[str, str]:
        """Variables a client process needs to talk to this head (the token is read from a 0600 file)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path}

    def client_env(self) -> dict[str, str]:
        """A full environment for a Ray CLI client of this head."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
        env.update(self.auth_env)
        env.update(LOOPBACK_ONLY)  # a driver joining a loopback-only head must not resolve itself to another address
        env["RAY_API_SERVER_ADDRESS"] = self.dashboard_url
        return env

    def to_json(self) -> dict:
        keys = ("address", "dashboard_url", "temp_dir", "token_path", "session_id", "private_dir")
        return {k: getattr(self, k) for k in keys}


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


class RayStartError(RuntimeError):
    """``ray start`` itself failed. Ray gives the raylet 30 s to register with the GCS, which a heavily
    loaded machine can exceed; a fresh attempt usually succeeds."""


def start_ray_head(
    num_cpus: int = 6, env: dict[str, str] | None = None, wait: bool = True, timeout: float = 180.0, attempts: int = 2
) -> RayHead:
    """Start a head; ``env`` adds variables that the head and so every job driver and worker inherit
    (e.g. ``MLFLOW_TRACKING_URI``). With ``wait=False`` it returns while ``ray start`` still runs: call
    :func:`wait_ray_head` before use (this lets other services boot at the same time). With ``wait``,
    a failed ``ray start`` is retried with a fresh head, ``attempts`` tries in all."""
    for attempt in range(1, attempts + 1):
        head = _launch(num_cpus, env)
        if not wait:
            return head
        try:
            wait_ray_head(head, timeout)
            return head
        except RayStartError:
            if attempt == attempts:
                raise
    raise ValueError(f"attempts must be at least 1, got {attempts}")


# Ray resolves a loopback --node-ip-address to the machine's network address and binds its gRPC servers
# there and on every interface, unless multi-node clusters are off (the switch Ray reads on every OS):
# then the node IP stays 127.0.0.1 and GCS, raylet, agents and workers bind to it only.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _launch(num_cpus: int, env: dict[str, str] | None) -> RayHead:
    private_dir = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # 0700, and short: socket paths live below it
    temp_dir = os.path.join(private_dir, "r")
    token_path = write_token(Path(private_dir) / "auth_token")
    ports = _ports()
    full_env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    full_env.update(env or {})
    full_env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path), "RAY_USAGE_STATS_ENABLED": "0"})
    full_env.update(LOOPBACK_ONLY)
    # `python` in a job's entrypoint must be this interpreter (the one with the project installed).
    full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full_env.get("PATH", "")])
    proc = spawn(start_args(temp_dir, num_cpus, ports), env=full_env, log_path=Path(private_dir) / "ray_start.log")
    return RayHead(
        address="", dashboard_url=f"http://127.0.0.1:{ports['dashboard-port']}", temp_dir=temp_dir,
        token_path=str(token_path), session_id=proc.pid, private_dir=private_dir, proc=proc,
    )  # fmt: skip


def wait_ray_head(head: RayHead, timeout: float = 180.0) -> None:
    """Block until ``ray start`` has returned and the dashboard (the Jobs API) answers; on failure stop
    the head and raise (:class:`RayStartError` with the ``ray start`` output when that failed)."""
    deadline = time.monotonic() + timeout
    log_path = Path(head.private_dir or head.temp_dir) / "ray_start.log"
    try:
        code = head.proc.wait(timeout=timeout) if head.proc else 0
    except subprocess.TimeoutExpired:
        code = None
    if code != 0:
        output = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
        stop_ray_head(head)
        raise RayStartError(f"ray start failed (exit code {code}, temp dir {head.temp_dir}):\n{output}")
    head.address = (Path(head.temp_dir) / "ray_current_cluster").read_text().strip()
    token = Path(head.token_path).read_text().strip()
    while time.monotonic() < deadline:
        if http_status(f"{head.dashboard_url}/api/version", {"Authorization": f"Bearer {token}"}) == 200:
            return
        time.sleep(0.25)
    stop_ray_head(head)
    raise TimeoutError(f"Ray dashboard {head.dashboard_url} did not answer within {timeout:.0f} s")


def head_processes(head: RayHead) -> list:
    """Every live process that belongs to this head (none once it is stopped)."""
    return find_processes([head.session_id], head_markers(head))


def head_markers(head: RayHead) -> list[str]:
    """Command-line strings that identify this head's processes outside its session."""
    # The client server's command line names only the GCS address, the others name the temp dir.
    return [head.temp_dir, head.address] if head.address else [head.temp_dir]


def stop_ray_head(head: RayHead, grace: float = 3.0, remove_temp_dir: bool = True) -> None:
    """Terminate this head's processes only (SIGTERM, then SIGKILL after ``grace`` s); raise if any survive.

    A local head holds nothing worth a long drain: GCS and raylet may take 10 s or more to honour
    SIGTERM, so a short grace keeps test teardown fast, as ``ray stop --force`` would.
    """
    survivors = stop_matching([head.session_id], head_markers(head), grace=grace)
    reap(head.proc)
    if survivors:
        names = ", ".join(f"{p.pid}" for p in survivors)
        raise RuntimeError(f"Ray head {head.address or head.temp_dir}: processes still alive after stop: {names}")
    if remove_temp_dir:
        remove_private_dirs(head)


def remove_private_dirs(head: RayHead) -> None:
    """Delete the head's temp dir and the private folder around it."""
    shutil.rmtree(head.private_dir or head.temp_dir, ignore_errors=True)


def load_head(data: dict) -> RayHead:
    """The inverse of :meth:`RayHead.to_json` (used by the dev stack's state file)."""
    return RayHead(**data)
