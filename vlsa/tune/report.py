"""What a trial tells Tune while it trains: one report every ``tune.report_every`` optimizer steps.

Ray Train V2 hands a worker's report to its controller through a queue of one, which the controller
drains on its poll (every 2 s): a report made before the previous one was taken waits for that poll.
Reporting every step cost about 2 s a step; reports further apart than the poll never wait. Each
report carries the window's mean losses (a smoothed training loss for ASHA) and ``global_step``, the
optimizer steps of every stage so far, the time axis of the scheduler.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from vlsa.train import checkpoint as ckpt

GLOBAL_STEP = "global_step"
"""The result key of the optimizer steps done over all stages (ASHA's time axis)."""


def steps_before(run: str, stage_index: int) -> int:
    """Optimizer steps of the stages before ``stage_index``, from the checkpoints that ended them."""
    total = 0
    for index in range(stage_index):
        final = ckpt.stage_final(run, index)
        if final is None:
            raise RuntimeError(f"run {run} starts stage {stage_index} without a checkpoint ending stage {index}")
        total += final.step
    return total


class WindowReporter:
    """Training-loop hook (``Hooks.after_step``): means of the losses over a window of steps, reported
    every ``every`` steps and at each stage's end. Every worker calls it, so every worker reports
    the same number of times (Ray Train requires it); rank 0's report is the one Tune sees."""

    def __init__(self, run: str, every: int, report: Callable[[dict[str, Any]], None],
                 offset: Callable[[str, int], int] = steps_before) -> None:
        self.run, self.every, self.report, self.offset = run, every, report, offset
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.stage_index, self.stage_offset = -1, 0

    def __call__(self, info) -> None:
        if info.stage_index != self.stage_index:  # a new (or resumed) stage: where its steps start
            self.stage_index, self.stage_offset = info.stage_index, self.offset(self.run, info.stage_index)
        if info.result is not None:
            self.add(info.result.losses)
        if info.step % self.every == 0 or info.step == info.total_steps:
            self.report(self.flush() | {GLOBAL_STEP: self.stage_offset + info.step, "stage_index": info.stage_index,
                                        "step": info.step})

    def add(self, losses: dict[str, float]) -> None:
        """One step's losses (non-finite values, e.g. of a skipped step, are left out of the means)."""
        for key, value in losses.items():
            if math.isfinite(value):
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0) + 1

    def flush(self) -> dict[str, float]:
        """The window's means, and the window starts again."""
        means = {key: total / self.counts[key] for key, total in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means
