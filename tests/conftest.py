"""Test tiers: plain ``pytest`` runs CPU unit and integration tests; ``gpu`` tests skip without
CUDA; ``slow`` tests run only with ``--runslow``. Nothing downloads: the hub is switched off."""

from __future__ import annotations

import os

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


def pytest_collection_modifyitems(config, items):
    import torch

    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One model cache per test session: tiny components are built and saved once."""
    return str(tmp_path_factory.mktemp("vlsa-cache"))
