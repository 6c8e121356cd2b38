from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlsa.config import DemoConfig


@pytest.fixture(scope="session")
def train_demo(tmp_path_factory):
    """A four-image demo dataset: every training step sees all of it, so losses fall within a few steps."""
    from vlsa.data.demo import generate_demo

    return generate_demo(DemoConfig(train_images=4, eval_images=2, min_side=24, max_side=48),
                         tmp_path_factory.mktemp("train-demo"))


@pytest.fixture(scope="session")
def train_labels(train_demo, cache_dir, tmp_path_factory):
    """Labels of the demo's instruction file (Stage II inserts SSFT turns), made by the labeling job
    in its own process and local Ray instance (as a user runs it before training)."""
    repo = Path(__file__).resolve().parents[2]
    output = tmp_path_factory.mktemp("train-labels") / "instruct"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "ray_jobs/label.py", "--data", train_demo.instruct, "--image-root",
               train_demo.image_root, "--output", str(output), "--config", "tiny", "--num-cpus", "4",
               f"model.cache_dir={cache_dir}"]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return str(output)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for a test module (explicit logical CPUs; always shut down)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False)
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def process_group():
    """A one-process gloo group, so DeepSpeed engines can be built in the test process."""
    import torch
    import torch.distributed as dist

    from vlsa.train.loop import _single_process_group

    if not dist.is_initialized():
        _single_process_group(torch.device("cpu"))
    yield
