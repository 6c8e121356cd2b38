"""Timing: synchronised runs, interleaved A/B repeats, and robust summaries.

Interleaving (A B A B ...) puts both variants under the same background load, which matters on a
shared machine: a slow spell hits both, and the per-pair ratio cancels much of it. Each run records
wall-clock seconds and the process's CPU seconds; on a CPU shared with other jobs the CPU seconds
(with one torch thread) measure the work itself, while wall time also counts waiting for a core.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from vlsa.bench.device import synchronize


@dataclass
class Timings:
    """Wall-clock and process-CPU seconds of repeated runs of one variant."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds one call of ``fn`` takes, device work included."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleave(fns: dict[str, Callable[[], object]], warmup: int, repeats: int,
               device: torch.device) -> dict[str, Timings]:
    """``warmup`` untimed rounds, then ``repeats`` timed rounds; each round calls every fn once, in order."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: Timings() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = timed(fn, device)
            times[name].wall.append(wall)
            times[name].cpu.append(cpu)
    return times


def summary(times: list[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max - min) / median) of a list of seconds."""
    if not times:
        raise ValueError("no timings to summarise")
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "max_s": max(times),
            "spread": (max(times) - min(times)) / med if med > 0 else 0.0}


def paired_ratios(a: list[float], b: list[float]) -> dict[str, float]:
    """Median (and min, max) of a_i / b_i over interleaved pairs."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired timings need equal, non-empty lists, got {len(a)} and {len(b)}")
    ratios = [x / y for x, y in zip(a, b)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
