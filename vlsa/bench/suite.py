"""``suite``: ``step``, ``mfu``, ``label`` and ``latency`` in one call, written to one JSON file.

Everything GPU-side is measured by ``python -m vlsa.bench suite --device cuda`` (preset ``bench_gpu``):
the benchmarks run one after the other in this process, each building its own models (the random
``init`` parts are saved to ``model.cache_dir`` by the first and only loaded by the rest), with the
device's memory released between them. The file holds each benchmark's full report under its name,
the seconds each took, and a summary of the figures the project has goals for: the VLSA/AnyRes step
time ratio (goal <= 0.35), MFU of the VLSA step (goal >= 45% of the bf16 peak) and the peak memory of
each variant. On ``bench_gpu`` it is designed to finish within 8 minutes on one H100/H200.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import torch

from vlsa.bench.device import describe
from vlsa.bench.report import Report
from vlsa.config import Config

SUITE = ("step", "mfu", "label", "latency")
GOALS = {"step_ratio": 0.35, "mfu": 0.45}


def _module(name: str):
    import importlib

    return importlib.import_module(f"vlsa.bench.{name}")


def _release(device: torch.device) -> None:
    """Free what the last benchmark left, so the next one starts from an empty device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run(cfg: Config, device: torch.device, out_dir: str) -> Report:
    """Every benchmark of ``SUITE`` in turn; the report is also written to ``out_dir/suite-<device>.json``."""
    sections, seconds = {}, {}
    for name in SUITE:
        start = time.perf_counter()
        report = _module(name).run(cfg, device, out_dir)
        seconds[name] = time.perf_counter() - start
        section = json.loads(report.to_json())
        section.pop("machine")  # the same machine throughout: kept once, at the top
        sections[name] = section
        _release(device)
    metrics = {"summary": summary(sections, seconds), **sections, "seconds": seconds}
    settings = {"preset": cfg.preset, "device": device.type, "benchmarks": list(SUITE)}
    path = Path(out_dir) / f"suite-{device.type}.json"
    return Report("suite", metrics, settings, describe(device), _lines(metrics["summary"], path), file=str(path))


def summary(sections: dict[str, dict], seconds: dict[str, float]) -> dict:
    """The figures with goals, and the memory and wall time, from the benchmarks' reports."""
    step, mfu = sections["step"], sections["mfu"]
    return {
        "step_ratio": step["ratio"], "step_ratio_goal": GOALS["step_ratio"],
        "flop_ratio": step["flop_ratio"],
        "mfu": mfu["mfu"], "mfu_goal": GOALS["mfu"], "mfu_peak_source": mfu["peak_source"],
        "memory_gib": step["memory"], "process_peak_gib": step["process_peak_gib"],
        "label_images_per_s": sections["label"]["images_per_s"],
        "label_images_per_s_bound": sections["label"]["images_per_s_bound"],
        "latency_ratios": [row["ratio"] for row in sections["latency"]["rows"]],
        "total_seconds": sum(seconds.values()),
    }


def _lines(s: dict, path: Path) -> list[str]:
    memory = ", ".join(f"{name} {m['peak_gib'] if m['peak_gib'] is not None else m['resident_gib']:.3f} GiB"
                       for name, m in s["memory_gib"].items())
    return [f"step time ratio VLSA/AnyRes {s['step_ratio']:.3f} (goal <= {s['step_ratio_goal']}; FLOPs predict "
            f"{s['flop_ratio']:.3f})",
            f"MFU of the VLSA step {s['mfu']:.1%} of {s['mfu_peak_source']} (goal >= {s['mfu_goal']:.0%})",
            f"memory per variant (peak alone on CUDA, resident on CPU): {memory}",
            f"labeling {s['label_images_per_s']:.2f} images/s"
            + (f" (the device's peak allows {s['label_images_per_s_bound']:.0f})" if s["label_images_per_s_bound"] else "")
            + f"; prefill latency ratios {s['latency_ratios']}",
            f"all four in {s['total_seconds']:.1f} s; every report in {path}"]
