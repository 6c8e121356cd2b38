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
import importlib.util
import logging
import os
import time
import warnings
from typing import Callable, Iterator

THIRD_PARTY_WARNINGS = (
    # DeepSpeed's ZeRO calls torch.distributed collectives that torch deprecates: one warning per call site
    # and worker, dozens a run, about code we do not own.
    (FutureWarning, r"torch\.distributed\.c10d_logger"),
)
"""(category, module regex) of third-party warnings hidden in every process of a command."""
THIRD_PARTY_NOTICES = {
    # Adding the image and SSFT marker tokens resizes the embeddings; the mean-resizing notice is expected.
    "transformers.modeling_utils": ("The new embeddings will be initialized", "The new lm_head weights will be"),
    # The frozen VQ-VAE / VAE are cast to their dtype on purpose; diffusers notes it even with no fp32 module.
    "diffusers.models.modeling_utils": ("There are modules in ",),
    # Our Ray Data jobs turn the progress bars off themselves (they log their own progress).
    "ray.data._internal.progress": ("Progress bars disabled",),
    # MLflow's system-metrics monitor announces each start and stop (every stage, every node).
    "mlflow.system_metrics.system_metrics_monitor": ("Skip logging GPU metrics", "Started monitoring system metrics",
                                                     "Stopping system metrics monitoring",
                                                     "Successfully terminated system metrics monitoring"),
}
"""Logger name -> message prefixes of third-party log notices hidden in every process of a command."""
FILE_NAMED_NOTICES = {
    # Ray Train's worker context logs every report (one line per report and rank, 19 per tiny trial).
    ("ray", "train/v2/_internal/execution/context.py"): ("Reporting training result",),
}
"""(package, file in it) -> message prefixes, for loggers named after their file's path
(``logging.getLogger(__file__)``): the name is found from where the package is installed."""
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}
"""Environment of every process: no 'Loading weights' progress bar per model part and worker."""


class _DropNotices(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_third_party() -> None:
    """Hide the known third-party noise (``THIRD_PARTY_WARNINGS``, ``THIRD_PARTY_NOTICES``, progress bars)
    in this process; every other warning, our own included, still shows. Ray runs it in each worker."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for category, module in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", category=category, module=module)
    for name, prefixes in (THIRD_PARTY_NOTICES | _file_named_notices()).items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices(prefixes))


def _file_named_notices() -> dict[str, tuple[str, ...]]:
    """``FILE_NAMED_NOTICES`` by logger name, for the packages installed here (nothing is imported)."""
    found = {}
    for (package, file), prefixes in FILE_NAMED_NOTICES.items():
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            found[os.path.join(spec.submodule_search_locations[0], file)] = prefixes
    return found


def quiet_runtime_env() -> dict:
    """The runtime environment that runs ``quiet_third_party`` in every Ray worker of the job."""
    return {"worker_process_setup_hook": f"{__name__}.quiet_third_party", "env_vars": dict(QUIET_ENV)}


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
    quiet_third_party()
    if started and os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=quiet_runtime_env())
    elif started:
        ray.init(num_cpus=num_cpus, num_gpus=torch.cuda.device_count(), runtime_env=quiet_runtime_env())
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
