"""CPU, memory, disk, network and GPU use of one node, logged to a run by MLflow's system-metrics monitor.

One monitor per node (its first worker), all logging to the stage's run under ``system/<node id>/``,
so the run's System metrics charts show every node apart. A last sample is logged when the monitor
stops, so even a stage shorter than the sampling interval has one.
"""

from __future__ import annotations


class NodeMonitor:
    """Samples this node every ``interval_s`` seconds into run ``run_id`` while started."""

    def __init__(self, uri: str, run_id: str, node_id: str, interval_s: float) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, samples_before_logging=1,
                                            resume_logging=True, node_id=node_id, tracking_uri=uri)

    def start(self) -> "NodeMonitor":
        self.monitor.start()
        return self

    def stop(self) -> None:
        """Stop sampling; log one last sample of the node as it is now."""
        self.monitor.finish()
        self.monitor.collect_metrics()
        self.monitor.publish_metrics(self.monitor.aggregate_metrics())
        self.monitor.mlflow_logger.flush()
