"""Submit a job with the real ``ray job submit`` CLI and collect its final status and logs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import uuid
from pathlib import Path

from cluster.local.ray_head import RAY_BIN, RayHead

# The last lines ``ray job submit`` prints once the job ends (ray/dashboard/modules/job/cli.py).
_FINAL = [
    (re.compile(r"Job '(?P<id>[^']+)' succeeded"), "SUCCEEDED"),
    (re.compile(r"Job '(?P<id>[^']+)' failed"), "FAILED"),
    (re.compile(r"Job '(?P<id>[^']+)' was stopped"), "STOPPED"),
    (re.compile(r"Status for job '(?P<id>[^']+)': (?P<status>\w+)"), None),
]


def submit_job(
    address: RayHead | str, entrypoint: str | list[str], working_dir: str | Path | None = None,
    env: dict[str, str] | None = None, timeout: float = 300.0,
) -> tuple[str, str]:  # fmt: skip
    """Run ``ray job submit`` (waits for the end) and return ``(status, logs)``.

    ``address`` is a :class:`RayHead` (its token is used) or a dashboard URL (the caller's environment
    must then hold ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN_PATH``). ``env`` becomes the job's
    ``runtime_env.env_vars``: use it for plain settings only, never for secrets. ``status`` is the Ray
    job status (``SUCCEEDED``, ``FAILED``, ``STOPPED``); ``logs`` is the driver's output.
    """
    url, client_env = _client(address)
    job_id = f"vlsa-{uuid.uuid4().hex[:12]}"
    argv = [RAY_BIN, "job", "submit", "--address", url, "--submission-id", job_id, "--log-style", "record"]
    argv += ["--log-color", "false"]
    if working_dir is not None:
        argv += ["--working-dir", str(working_dir)]
    if env:
        argv += ["--runtime-env-json", json.dumps({"env_vars": env})]
    argv += ["--", *(shlex.split(entrypoint) if isinstance(entrypoint, str) else entrypoint)]
    try:
        done = subprocess.run(argv, env=client_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        _ray_job(["stop", job_id], url, client_env)
        raise TimeoutError(f"job {job_id} ({entrypoint!r}) did not finish within {timeout:.0f} s")
    status = parse_final_status(done.stdout + done.stderr, job_id)
    if status is None:
        output = done.stdout[-3000:] + done.stderr[-3000:]
        raise RuntimeError(f"ray job submit exited with {done.returncode} without a final status:\n{output}")
    return status, job_logs(address, job_id, client_env)


def job_logs(address: RayHead | str, job_id: str, client_env: dict[str, str]) -> str:
    """The driver's output: read from a local head's log folder (exact, and spares a CLI start), or
    fetched with ``ray job logs`` from a remote one."""
    if isinstance(address, RayHead):
        path = Path(address.temp_dir) / "session_latest" / "logs" / f"job-driver-{job_id}.log"
        if path.exists():
            return path.read_text(errors="replace")
    url = address.dashboard_url if isinstance(address, RayHead) else address
    return _ray_job(["logs", job_id], url, client_env)


def parse_final_status(output: str, job_id: str) -> str | None:
    """The job status from the CLI's closing lines, or None when it printed none."""
    for line in reversed(output.splitlines()):
        for pattern, status in _FINAL:
            match = pattern.search(line)
            if match and match.group("id") == job_id:
                return status or match.group("status")
    return None


def _client(address: RayHead | str) -> tuple[str, dict[str, str]]:
    if isinstance(address, RayHead):
        return address.dashboard_url, address.client_env()
    return address, dict(os.environ)


def _ray_job(args: list[str], url: str, env: dict[str, str]) -> str:
    argv = [RAY_BIN, "job", *args, "--address", url, "--log-style", "record", "--log-color", "false"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"`ray job {' '.join(args)}` failed with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout
