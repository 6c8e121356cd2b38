"""Timing: synchronised wall-clock runs, interleaved A/B repeats, and robust summaries.

Interleaving (A B A B ...) puts both variants under the same background load, which matters on a
shared machine: a slow spell hits both, and the per-pair ratio cancels it.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from vlsa.bench.device import synchronize


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleave(fns: dict[str, Callable[[], object]], warmup: int, repeats: int,
               device: torch.device) -> dict[str, list[float]]:
    """``warmup`` untimed rounds, then ``repeats`` timed rounds; each round calls every fn once, in order."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
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
