"""How many trials of a sweep fit at once on a cluster (each holds a trial driver and its Train workers)."""

from __future__ import annotations

from vlsa.config import Config

DRIVER_CPUS = 1
"""Logical CPUs a trial's driver (the Tune function that calls ``trainer.fit()``) reserves."""


def trial_cpus(cfg: Config) -> int:
    """CPUs one trial holds while its Train workers run."""
    return DRIVER_CPUS + cfg.run.num_workers * cfg.run.cpus_per_worker


def max_concurrent(cfg: Config, resources: dict[str, float]) -> int:
    """Trials that can run at once on a cluster with ``resources`` (as ``ray.cluster_resources()``).

    Without this limit Tune starts as many trial drivers as there are CPUs, and the drivers then
    wait forever for CPUs their own Train workers need.
    """
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    fit = cpus // trial_cpus(cfg)
    if cfg.run.use_gpu:
        fit = min(fit, gpus // max(1, cfg.run.num_workers))
    if fit < 1:
        raise RuntimeError(f"one trial needs {trial_cpus(cfg)} CPUs"
                           f"{f' and {cfg.run.num_workers} GPUs' if cfg.run.use_gpu else ''}; the cluster has "
                           f"{cpus} CPUs and {gpus} GPUs")
    return min(fit, cfg.tune.max_concurrent) if cfg.tune.max_concurrent else fit
