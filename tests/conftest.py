"""Test tiers: plain ``pytest`` runs CPU unit and integration tests; ``gpu`` tests skip without
CUDA; ``slow`` tests run only with ``--runslow``. Nothing downloads: the hub is switched off.

A test is ``integration`` when it uses a fixture that starts a service (``SERVICE_FIXTURES``), so
``pytest -m "not integration and not slow"`` starts none: a test outside that tier that starts a Ray
instance or a process group fails, naming it, and such a run fails when a service process is left."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Real-service fixtures (s3_server, mlflow_server, mlflow_server_s3, ray_head) for integration tests.
pytest_plugins = ["tests.services"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


SERVICE_FIXTURES = frozenset({
    "local_ray", "process_group",  # tests/train/conftest.py, tests/tune/conftest.py
    "s3_server", "mlflow_server", "mlflow_server_s3", "ray_head", "_service_pool",  # tests/services.py
})
"""Fixtures that start Ray, a torch.distributed process group, an MLflow server or moto."""
SERVICE_WORDS = ("ray", "mlflow", "moto", "gunicorn", "uvicorn")
"""Words in the command line of a service process."""


def pytest_collection_modifyitems(config, items):
    import torch

    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core, at most 4. Most integration tests wait on Ray, servers and
    subprocesses for much of their time, so two workers on a 2-core machine keep both cores busy; each
    worker's Ray instances take 4-6 logical CPUs and a few GiB, so many more would not fit a small host."""
    return max(1, min(4, os.cpu_count() or 1))


def pytest_configure(config):
    """An xdist worker computes with its share of the cores: torch's default (one OpenMP thread per core in
    every worker) oversubscribes the machine, and the waiting threads spin: the labeling precision tests took
    about four times the CPU time with two threads in each of two workers on 2 cores. Processes the tests
    start (Ray workers, subprocesses) keep their own settings."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_unconfigure(config):
    """The last thing a test process does: its objects are left out of the garbage collections of the
    interpreter's shutdown, which otherwise spends about a second per process walking the heap that torch,
    transformers and the other libraries built (nothing of the run is left to finalize by then)."""
    import gc

    gc.freeze()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One model cache per test session: tiny components are built and saved once."""
    return str(tmp_path_factory.mktemp("vlsa-cache"))


@pytest.fixture(autouse=True)
def _no_service_outside_integration(request):
    """Fail a test that is not ``integration`` but starts Ray or a process group (cheap to check per test)."""
    before = _runtime_state()
    yield
    if request.node.get_closest_marker("integration") is None:
        started = sorted(_runtime_state() - before)
        if started:
            pytest.fail(f"{request.node.nodeid} is not marked integration but started {started}; mark it, "
                        f"or use a fixture of tests/conftest.py SERVICE_FIXTURES", pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """A run without integration tests must leave no service process behind (one /proc scan at the end)."""
    items = getattr(session, "items", [])
    if not items or any(item.get_closest_marker("integration") for item in items):
        return
    services = sorted(cmd for cmd in _child_commands() if any(word in cmd for word in SERVICE_WORDS))
    if services:
        session.config.get_terminal_writer().line(f"service processes started outside integration tests: {services}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _runtime_state() -> set[str]:
    state = set()
    ray, dist = sys.modules.get("ray"), sys.modules.get("torch.distributed")
    if ray is not None and ray.is_initialized():
        state.add("a Ray instance")
    if dist is not None and dist.is_available() and dist.is_initialized():
        state.add("a process group")
    return state


def _child_commands() -> set[str]:
    """Command lines of this process's children (Linux ``/proc``; empty elsewhere)."""
    me, found = str(os.getpid()), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == me:
                found.add((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200])
        except (OSError, IndexError):  # a process that just ended
            continue
    return found
