"""Records found bad during training (an image or label gone after validation): counted, logged, bounded.

The dataset replaces such a record by the next good one and names it in the batch (``skipped``).
Here every rank collects the distinct records it met; the ranks agree on the union (a one-number
all-reduce per step, the ids gathered only when that number changed), rank 0 logs the counts per
reason as MLflow metrics, and every rank stops with ``TooManyRejected`` once the records rejected at
validation plus those met in training pass ``data.reject_threshold`` of the data file's records.
"""

from __future__ import annotations

from collections import Counter

import torch

from vlsa.io.records import RejectStats, TooManyRejected

METRIC_PREFIX = "data_rejected"


class TrainingRejects:
    """Distinct records rejected while training one stage, agreed across ranks."""

    def __init__(self, stats: RejectStats, threshold: float, where: str, device: torch.device) -> None:
        self.stats, self.threshold, self.where, self.device = stats, threshold, where, device
        self.local: dict[str, str] = {}
        self.merged: dict[str, str] = {}
        self._gathered = 0

    def add(self, batches: list[dict]) -> None:
        """Note the records the loader skipped in these micro-batches."""
        for batch in batches:
            for record_id, reason in batch.get("skipped", []):
                self.local.setdefault(str(record_id), str(reason))

    def sync(self) -> None:
        """Agree on the union of every rank's records (every rank must call it, each step)."""
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_world_size() == 1:
            self.merged = dict(self.local)
            return
        count = torch.tensor([len(self.local)], dtype=torch.long, device=self.device)
        dist.all_reduce(count)
        if int(count) == self._gathered:
            return
        self._gathered = int(count)
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.local)
        for part in parts:
            for record_id, reason in part.items():
                self.merged.setdefault(record_id, reason)

    def metrics(self) -> dict[str, float]:
        """``data_rejected/<reason>`` counts and ``data_rejected_fraction`` (validation included)."""
        if not self.merged:
            return {}
        out = {f"{METRIC_PREFIX}/{reason}": float(n) for reason, n in Counter(self.merged.values()).items()}
        out[f"{METRIC_PREFIX}_fraction"] = self.fraction()
        return out

    def fraction(self) -> float:
        rejected = sum(self.stats.rejected.values()) + len(self.merged)
        return rejected / self.stats.total if self.stats.total else 0.0

    def check(self) -> None:
        """Raise ``TooManyRejected`` past the threshold, naming the counts by reason."""
        if self.fraction() <= self.threshold:
            return
        during = dict(sorted(Counter(self.merged.values()).items()))
        raise TooManyRejected(
            f"{self.where}: {len(self.merged)} records failed during training {during} and "
            f"{sum(self.stats.rejected.values())} at validation, of {self.stats.total} "
            f"({self.fraction():.1%} > data.reject_threshold {self.threshold:.1%}); "
            f"e.g. {', '.join(sorted(self.merged)[:5])}"
        )
