"""Process plumbing for local services: free ports, readiness polls, and stopping exactly what we started.

Every service is launched in a new session, so the session id names the whole group of processes it
spawns; daemons that re-parent to init keep that session id. Processes that start a session of their
own (a Ray job's entrypoint, for example) are found as descendants or by a marker string (a temp dir,
an address) on their command line. Nothing here matches by program name, so services that other
users run on the same machine are never touched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

import psutil


# Ports handed out by this process so far: a port chosen for one service that has not bound it yet
# still looks free, and the OS may offer it again to the next service starting alongside.
_GIVEN: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it), never one this process handed out
    before: services that start at the same time must not be given the same port."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def spawn(argv: list[str], *, env: dict[str, str], log_path: Path, cwd: str | None = None) -> subprocess.Popen:
    """Start ``argv`` in a new session (so it can be found and stopped as a group), output to a log.

    The service and everything it starts get umask 077: its databases, logs, sockets and secrets are
    created readable by the owner only, whatever the caller's umask.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as log:
        return subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, umask=0o077,
        )  # fmt: skip


def http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> int | None:
    """The HTTP status code of a GET, or None when nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def wait_http(url: str, *, timeout: float, proc: subprocess.Popen | None = None, log_path: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early with the log tail when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_status(url) == 200:
            return
        if proc is not None and proc.poll() is not None:
            command = " ".join(proc.args[:3])
            raise RuntimeError(f"`{command}` exited with {proc.returncode} before {url} answered{_tail(log_path)}")
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s{_tail(log_path)}")


def _tail(log_path: Path | None, lines: int = 30) -> str:
    if log_path is None or not Path(log_path).exists():
        return ""
    text = Path(log_path).read_text(errors="replace").splitlines()[-lines:]
    return "\n--- log tail ---\n" + "\n".join(text)


def find_processes(session_ids: Iterable[int] = (), markers: Iterable[str] = ()) -> list[psutil.Process]:
    """Processes in any of ``session_ids`` or with a marker on their command line, plus their descendants."""
    session_ids, markers = set(session_ids), [m for m in markers if m]
    roots = {}
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            in_session = os.getsid(proc.pid) in session_ids
        except OSError:  # exited while we looked
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        if in_session or any(marker in cmdline for marker in markers):
            roots[proc.pid] = proc
    return _with_descendants(roots)


def _with_descendants(roots: dict[int, psutil.Process]) -> list[psutil.Process]:
    found = dict(roots)
    for proc in roots.values():
        try:
            found.update({c.pid: c for c in proc.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE})
        except psutil.NoSuchProcess:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def terminate(procs: list[psutil.Process], grace: float = 10.0) -> list[psutil.Process]:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns the processes still alive after that."""
    for proc in procs:
        _signal(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    _, alive = psutil.wait_procs(alive, timeout=5.0)
    return alive


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def stop_matching(
    session_ids: Iterable[int] = (), markers: Iterable[str] = (), grace: float = 10.0, rounds: int = 3
) -> list[psutil.Process]:
    """Stop every process :func:`find_processes` names, re-scanning for late children; returns survivors."""
    session_ids, markers = list(session_ids), list(markers)
    for _ in range(rounds):
        procs = find_processes(session_ids, markers)
        if not procs:
            return []
        terminate(procs, grace)
    return find_processes(session_ids, markers)


def reap(proc: subprocess.Popen | None) -> None:
    """Collect the exit status of a child we spawned, so it does not linger as a zombie."""
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
