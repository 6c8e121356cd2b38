from __future__ import annotations

import pytest

from vlsa.config import DemoConfig


@pytest.fixture(scope="session")
def train_demo(tmp_path_factory):
    """A four-image demo dataset: every training step sees all of it, so losses fall within a few steps."""
    from vlsa.data.demo import generate_demo

    return generate_demo(DemoConfig(train_images=4, eval_images=2, min_side=24, max_side=48),
                         tmp_path_factory.mktemp("train-demo"))


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
