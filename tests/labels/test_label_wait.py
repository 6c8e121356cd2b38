"""The labeling job waits, bounded, for GPU workers to join instead of starting on a cluster without them."""

from __future__ import annotations

import pytest

from vlsa.config import ConfigError, load_config
from vlsa.ray_session import gpus_requested, wait_for_gpus


class Clock:
    """Seconds that pass only when the wait sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_returns_once_the_gpus_have_joined():
    clock, lines = Clock(), []
    joined = {0.0: 0, 10.0: 8, 20.0: 16}  # two 8-GPU nodes join one after the other

    def resources():
        return {"CPU": 180.0, "GPU": float(joined[clock.now])}

    found = wait_for_gpus(16, 60, resources, lines.append, poll_s=10, clock=clock, sleep=clock.sleep)
    assert found["GPU"] == 16 and clock.now == 20.0
    assert lines == ["waiting for GPUs: 0 of 16 after 0s (timeout 60s)", "waiting for GPUs: 8 of 16 after 10s (timeout 60s)"]


def test_wait_fails_after_the_timeout_naming_what_joined():
    clock = Clock()
    with pytest.raises(TimeoutError, match=r"has 8 of the 16 GPUs this job needs after waiting 25s") as err:
        wait_for_gpus(16, 25, lambda: {"GPU": 8.0}, lambda _: None, poll_s=10, clock=clock, sleep=clock.sleep)
    assert clock.now == 25.0  # the last sleep is cut to the deadline
    assert "label.wait_timeout_s" in str(err.value)


def test_label_config_checks_the_wait_settings():
    assert load_config("tiny").label.min_gpus == 0  # small runs do not wait
    with pytest.raises(ConfigError, match="label.min_gpus"):
        load_config("tiny", ["label.min_gpus=-1"])
    with pytest.raises(ConfigError, match="label.wait_timeout_s"):
        load_config("tiny", ["label.wait_timeout_s=0"])


@pytest.mark.integration
def test_request_on_a_real_cluster_returns_its_gpus_or_times_out():
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)  # one logical GPU: none is used
    try:
        with gpus_requested(1, 5, poll_s=0.1) as resources:
            assert resources["GPU"] == 1
        with pytest.raises(TimeoutError, match="has 1 of the 2 GPUs"):
            with gpus_requested(2, 1, lambda _: None, poll_s=0.2):
                pass
    finally:
        ray.shutdown()
