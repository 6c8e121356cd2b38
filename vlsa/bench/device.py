"""The measuring device: which one, its precision, its peak, a measured matmul ceiling, and a description."""

from __future__ import annotations

import os
import platform
import time
from typing import Callable

import torch

from vlsa.config import Config

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; matched in order against the
# CUDA device name, so the more specific names come first.
PEAK_BF16 = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


def resolve(name: str | None) -> torch.device:
    """``cpu`` or ``cuda`` (None: cuda when available)."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA device")
    return torch.device(name)


def dtype_for(cfg: Config, device: torch.device) -> torch.dtype:
    """The step's dtype from ``train.precision`` (auto: bf16 on CUDA, fp32 on CPU)."""
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else torch.float32


def use_threads(threads: int) -> None:
    """Set torch's CPU threads (0 keeps torch's default)."""
    if threads < 0:
        raise ValueError(f"bench.threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def table_peak(device: torch.device) -> tuple[float, str] | None:
    """(peak FLOP/s, label) of a known CUDA device in bf16, or None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16:
        if key in name:
            return peak, f"{key} dense bf16 peak (data sheet)"
    return None


def clock(device: torch.device) -> Callable[[], float]:
    """The clock a benchmark's throughput is measured with: process CPU seconds on a CPU (robust to
    other jobs sharing the cores), wall-clock seconds on a GPU."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int = 1024, seconds: float = 1.0) -> float:
    """FLOP/s of back-to-back n x n matmuls in ``dtype``, measured now (best timed run, on ``clock``)."""
    now = clock(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: kernel selection, thread pool start
    synchronize(device)
    reps, best, deadline = 1, 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = now()
        for _ in range(reps):
            a @ b
        synchronize(device)
        elapsed = max(now() - start, 1e-9)
        best = max(best, 2.0 * n**3 * reps / elapsed)
        reps = min(reps * 2, 64) if elapsed < 0.05 else reps
    return best


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device) -> dict[str, str | int]:
    """The machine as the reports print it."""
    info: dict[str, str | int] = {
        "device": device.type,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "",
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda or ""
    return info
