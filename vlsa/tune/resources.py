"""How many trials of a sweep fit at once on a cluster (each holds a trial driver and its Train workers).

The count is taken from what the cluster can grow to: on an autoscaling cluster whose workers are
scaled to zero the current totals hold no trial, and the autoscaler adds nodes as trials ask for them.
"""

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


AUTOSCALER_KV = ("__autoscaler", "__autoscaler_cluster_config")
"""(namespace, key) under which the autoscaler publishes its node groups in the GCS (Ray Train reads it too)."""


def cluster_capacity() -> dict[str, float]:
    """The cluster's resources, or, where an autoscaler has published its node groups, the most they
    grow to (per resource, whichever is larger)."""
    import ray

    current = ray.cluster_resources()
    most = autoscaler_max()
    return {key: max(float(current.get(key, 0)), float(most.get(key, 0))) for key in {*current, *most}}


def autoscaler_max() -> dict[str, float]:
    """Resources of every node group at its ``max_count`` (empty without an autoscaler; an unbounded
    group counts as a large finite amount)."""
    from ray.core.generated.autoscaler_pb2 import ClusterConfig
    from ray.experimental import internal_kv

    namespace, key = AUTOSCALER_KV
    raw = internal_kv._internal_kv_get(key, namespace=namespace)
    if not raw:
        return {}
    config = ClusterConfig.FromString(raw)
    most: dict[str, float] = {}
    for group in config.node_group_configs:
        count = group.max_count if group.max_count >= 0 else UNBOUNDED_NODES
        for name, amount in group.resources.items():
            most[name] = most.get(name, 0.0) + count * amount
    return {name: min(value, config.max_resources.get(name, value)) for name, value in most.items()}


UNBOUNDED_NODES = 1024
"""Nodes assumed for a node group without a maximum."""
