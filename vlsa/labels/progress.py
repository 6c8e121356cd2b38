"""Progress lines a user can follow while labeling runs, the end-of-run summary, and MLflow logging.

Busy fraction = time spent inside model calls (device work included) / (wall time x actors): the
share of the run the accelerators (or the CPU actors) were computing rather than waiting for data.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from typing import Any, Callable

from vlsa.config import Config, flatten
from vlsa.io import tracking

logger = logging.getLogger("vlsa.labels")


class Progress:
    """Collects the per-shard summaries of a run and reports each as one line."""

    def __init__(self, total_shards: int, pending: int, actors: int, log: Callable[[str], None] = logger.info):
        self.total_shards, self.pending, self.actors, self.log = total_shards, pending, actors, log
        self.started = time.perf_counter()
        self.done = 0
        self.rows = self.rejects = 0
        self.model_seconds = self.write_seconds = 0.0
        self.reasons: Counter = Counter()
        self.device = ""

    def shard_done(self, summary: dict[str, Any]) -> None:
        """Count one shard summary (a row from the labeling actors) and log its line."""
        self.done += 1
        rows, rejects = int(summary["rows"]), int(summary["rejects"])
        self.rows, self.rejects = self.rows + rows, self.rejects + rejects
        self.model_seconds += float(summary["model_seconds"])
        self.write_seconds += float(summary.get("write_seconds", 0.0))
        self.reasons.update(json.loads(str(summary["reasons"])))
        self.device = str(summary["device"])
        elapsed = time.perf_counter() - self.started
        shard_rate = (rows + rejects) / max(float(summary["seconds"]) + float(summary["decode_seconds"]), 1e-9)
        overall = (self.rows + self.rejects) / max(elapsed, 1e-9)
        left = elapsed / self.done * (self.pending - self.done)
        self.log(
            f"shard {int(summary['shard']):05d} [{self.done}/{self.pending}]: {rows} labeled, {rejects} rejected, "
            f"{shard_rate:.1f} images/s in shard, {overall:.1f} images/s overall, ~{left:.0f} s left"
        )

    def summary(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """This run's throughput and busy fraction, with the output's totals from ``manifest``."""
        wall = time.perf_counter() - self.started
        images = self.rows + self.rejects
        return {
            "shards_total": self.total_shards,
            "shards_run": self.done,
            "shards_skipped": self.total_shards - self.pending,
            "images": images,
            "labeled": self.rows,
            "rejected": self.rejects,
            "rejects_by_reason": dict(sorted(self.reasons.items())),
            "wall_seconds": round(wall, 3),
            "images_per_s": round(images / wall, 3) if images else 0.0,
            "model_seconds": round(self.model_seconds, 3),
            "write_seconds": round(self.write_seconds, 3),  # encode + upload, overlapped with labeling
            "busy_fraction": round(self.model_seconds / (wall * self.actors), 4) if images and self.actors else None,
            "actors": self.actors,
            "device": self.device,
            "output_rows": manifest["rows"],
            "output_rejects": manifest["rejects"],
            "output_rejects_by_reason": manifest["rejects_by_reason"],
        }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as a few readable lines."""
    busy = "n/a" if summary["busy_fraction"] is None else f"{summary['busy_fraction']:.1%}"
    return [
        f"labeled {summary['labeled']} images, rejected {summary['rejected']} in {summary['wall_seconds']:.1f} s: "
        f"{summary['images_per_s']:.1f} images/s, {summary['actors']} actor(s) on {summary['device'] or 'n/a'}, "
        f"busy {busy}",
        f"shards: {summary['shards_run']} run, {summary['shards_skipped']} already complete, "
        f"{summary['shards_total']} total",
        f"output: {summary['output_rows']} label rows, {summary['output_rejects']} rejects by reason "
        f"{summary['output_rejects_by_reason']}",
    ]


def tracking_uri(cfg: Config) -> str:
    """The configured MLflow tracking URI, or ``MLFLOW_TRACKING_URI``, or empty (no logging)."""
    return cfg.run.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")


def log_to_mlflow(cfg: Config, summary: dict[str, Any], params: dict[str, Any]) -> str | None:
    """Log the summary as one MLflow run when a tracking URI is configured; returns the run id.

    Goes through an explicit ``MlflowClient``, so the process's MLflow state (tracking URI, active
    experiment and run) is left as it was.
    """
    uri = tracking_uri(cfg)
    if not uri:
        return None
    from mlflow.entities import Param

    client = tracking.client(uri)
    exp_id = tracking.experiment_id(client, cfg.run.mlflow.experiment)
    run_id = client.create_run(exp_id, run_name=f"{cfg.run.name}-label").info.run_id
    try:
        values = {**params, **flatten({"label": cfg.to_dict()["label"]})}
        tracking.log_params(client, run_id, [Param(k, str(v)) for k, v in values.items()])
        client.log_batch(run_id, metrics=_metrics(summary))
        client.log_dict(run_id, summary, "label_summary.json")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def _metrics(summary: dict[str, Any]) -> list:
    """The summary's numbers and the output's rejects per reason (``rejects.<reason>``) as MLflow metrics."""
    from mlflow.entities import Metric

    numbers = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    numbers.update({f"rejects.{reason}": float(n) for reason, n in summary["output_rejects_by_reason"].items()})
    now = int(time.time() * 1000)
    return [Metric(key, value, now, 0) for key, value in sorted(numbers.items())]
