"""Shared settings of the sweep tests: a hard-shrunk tiny preset and one local Ray for the package."""

from __future__ import annotations

import pytest

# Two 1-step stages on a handful of demo images: every trial is a real (tiny) training run.
SHRINK = [
    "demo.train_images=4", "demo.eval_images=2", "demo.max_side=48",
    "train.stages.0.max_steps=1", "train.stages.0.global_batch=2", "train.stages.0.micro_batch=2",
    "train.stages.1.max_steps=1", "train.stages.1.global_batch=2", "train.stages.1.micro_batch=2",
    "model.recon.sample_steps=1", "run.max_failures=0", "eval.max_new_tokens=2",
]


def shrunk(root, mlflow_uri: str, cache_dir: str, *extra: str) -> list[str]:
    """Overrides of the tiny preset for a test sweep storing under ``root`` (models built once per session)."""
    return SHRINK + [f"run.storage_path={root / 'runs'}", f"run.mlflow.tracking_uri={mlflow_uri}",
                     f"model.cache_dir={cache_dir}", *extra]


@pytest.fixture(scope="package")
def local_ray():
    """A local Ray instance with 4 logical CPUs (two trials of driver + worker fit at once)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False)
    try:
        yield ray
    finally:
        ray.shutdown()
