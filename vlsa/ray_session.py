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
from typing import Iterator


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
