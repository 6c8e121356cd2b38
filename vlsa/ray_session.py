"""The Ray instance a command runs on: the cluster it was submitted to, or a local one.

Only ``RAY_ADDRESS`` selects a cluster (``ray job submit`` sets it): a bare ``ray.init()`` could join
an unrelated instance on the same machine. A local instance gets explicit logical CPUs, the GPUs
present, and the dashboard when Ray's ``default`` extra is installed: Ray Train's placement-group
cleaner and Tune's bookkeeping query the State API that the dashboard serves. The dashboard listens
on 127.0.0.1 only and Ray's token authentication stays on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from typing import Callable, Iterator


def default_num_cpus() -> int:
    """Logical CPUs of a local instance: at least 4, so small machines still fit a driver, its
    workers and Ray Data's read tasks (logical CPUs are a scheduling budget, not threads)."""
    return max(4, os.cpu_count() or 1)


def add_num_cpus_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--num-cpus`` option every entry point shares."""
    parser.add_argument("--num-cpus", type=int, default=default_num_cpus(),
                        help="logical CPUs of the local Ray instance (ignored on a cluster)")


@contextlib.contextmanager
def ray_session(num_cpus: int) -> Iterator[None]:
    """Ray for one command: the cluster at ``RAY_ADDRESS``, the instance this process already runs,
    or a local instance with ``num_cpus`` logical CPUs; an instance started here is shut down on exit."""
    import ray
    import torch

    started = not ray.is_initialized()
    if started and os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    elif started:
        ray.init(num_cpus=num_cpus, num_gpus=torch.cuda.device_count())
    try:
        yield
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def gpus_requested(count: int, timeout_s: float, log: Callable[[str], None] = print, *,
                   poll_s: float = 10.0) -> Iterator[dict[str, float]]:
    """Ask the autoscaler for ``count`` GPUs, wait until they have joined, and yield the cluster's resources;
    the request is withdrawn on exit, so idle nodes can scale down again. ``count`` 0 waits for nothing.

    A job submitted to a cluster scaled to zero starts before any GPU node exists: sizing its work to the
    resources it sees then would run it on the head's CPUs, or fail."""
    import ray
    from ray.autoscaler.sdk import request_resources

    if count <= 0:
        yield ray.cluster_resources()
        return
    request_resources(bundles=[{"GPU": 1}] * count)
    try:
        yield wait_for_gpus(count, timeout_s, ray.cluster_resources, log, poll_s=poll_s)
    finally:
        request_resources(bundles=[])


def wait_for_gpus(count: int, timeout_s: float, resources: Callable[[], dict[str, float]],
                  log: Callable[[str], None] = print, *, poll_s: float = 10.0,
                  clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                  ) -> dict[str, float]:
    """Poll ``resources()`` until it has ``count`` GPUs; raise TimeoutError after ``timeout_s`` seconds."""
    start = clock()
    while True:
        current = resources()
        have = int(current.get("GPU", 0))
        if have >= count:
            return current
        waited = clock() - start
        if waited >= timeout_s:
            raise TimeoutError(
                f"the cluster has {have} of the {count} GPUs this job needs after waiting {timeout_s:.0f}s for "
                f"the autoscaler (resources: {current}); check that GPU nodes can start (quota, capacity, node "
                f"group limits), or lower the GPUs asked for (label.min_gpus) or raise label.wait_timeout_s")
        log(f"waiting for GPUs: {have} of {count} after {waited:.0f}s (timeout {timeout_s:.0f}s)")
        sleep(min(poll_s, max(0.0, timeout_s - waited)))
