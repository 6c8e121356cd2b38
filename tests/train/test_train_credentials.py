"""Credentials stay on the nodes: a run whose node environment holds (canary) secrets leaves no trace of
them in Ray's session folder, MLflow or the run folder, and the workers still see them from their node
(and start with the allocator settings the driver gives them)."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from train_helpers import small_config

from tests.services import patched_environ
from tests.tracking_db import sqlite_tracking_uri
from vlsa.train.allocator import WORKER_ALLOCATOR
from vlsa.train.driver import FORWARDED_ENV, train, worker_env
from vlsa.train.loop import Hooks, train_worker

pytestmark = pytest.mark.integration
CANARIES = {
    "AWS_SECRET_ACCESS_KEY": "canary-aws-secret-5d1f0a7c",
    "AWS_SESSION_TOKEN": "canary-aws-session-8e2b4c19",
    "MLFLOW_TRACKING_PASSWORD": "canary-mlflow-password-3a9e77d0",  # pragma: allowlist secret
    "MLFLOW_TRACKING_TOKEN": "canary-mlflow-token-c4f61b28",
}


def test_no_credential_is_forwarded():
    with patched_environ({**CANARIES, "AWS_ACCESS_KEY_ID": "canary-key-id", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}):
        forwarded = worker_env()
    assert forwarded["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and not set(CANARIES) & set(FORWARDED_ENV)
    assert not {"AWS_ACCESS_KEY_ID", *CANARIES} & set(forwarded)


def _node_env_hook(flags: Path) -> Hooks:
    """Records, as names only, which canaries a worker sees in its environment."""

    def after_step(info) -> None:
        seen = sorted(k for k, v in CANARIES.items() if os.environ.get(k) == v)
        (flags / f"rank{info.rank}").write_text(",".join(seen))
        # the environment the process was started with, which glibc's allocator settings are read from
        started = Path("/proc/self/environ").read_bytes().split(b"\0")
        allocator = sorted(k for k, v in WORKER_ALLOCATOR.items() if f"{k}={v}".encode() in started)
        (flags / f"allocator{info.rank}").write_text(",".join(allocator))

    return Hooks(after_step=after_step)


def _files_with(root: Path, needles: list[bytes]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:  # a socket or a file removed meanwhile
                continue
            hits = [n.decode() for n in needles if n in data]
            if hits:
                found[str(path.relative_to(root))] = hits
    return found


def _artifact_root(cfg) -> Path:
    """The local folder of the run's MLflow artifacts (where the stage runs logged their images)."""
    from urllib.parse import urlparse

    from mlflow import MlflowClient

    location = MlflowClient(cfg.run.mlflow.tracking_uri).get_experiment_by_name(cfg.run.mlflow.experiment)
    root = Path(urlparse(location.artifact_location).path)
    assert list(root.rglob("*.png")), f"no artifact under {root}"
    return root


def test_a_run_leaves_no_trace_of_node_credentials(train_demo, train_labels, cache_dir, tmp_path):
    import ray

    assert not ray.is_initialized()
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-canary-"))
    flags = tmp_path / "flags"
    flags.mkdir()
    cfg = small_config(train_demo, cache_dir, tmp_path / "runs", "canary", sqlite_tracking_uri(tmp_path),
                       workers=1, steps=1, labels=train_labels,
                       extra=("train.checkpoint_every=0", "run.mlflow.experiment=canary"))
    try:
        # The node's environment (what cluster files, an instance role or a secret provide) holds them.
        with patched_environ(CANARIES, unset=tuple(WORKER_ALLOCATOR)):
            ray.init(num_cpus=4, include_dashboard=False, _temp_dir=str(ray_dir))
            try:
                train(cfg, train_fn=functools.partial(train_worker, hooks=_node_env_hook(flags)))
            finally:
                ray.shutdown()
        assert (flags / "rank0").read_text() == ",".join(sorted(CANARIES))  # the workers have them
        assert (flags / "allocator0").read_text() == ",".join(sorted(WORKER_ALLOCATOR))  # set at process start
        needles = [v.encode() for v in CANARIES.values()]
        assert _files_with(ray_dir, needles) == {}
        assert _files_with(tmp_path, needles) == {}  # MLflow's database, the run folder
        assert _files_with(_artifact_root(cfg), needles) == {}
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
