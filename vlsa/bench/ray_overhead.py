"""``ray-overhead``: the same training loop through Ray Train vs plain PyTorch, ratio of step times.

The loop (build the VLSA model, AdamW, warm-up, timed steps) runs three times: in this process,
inside a one-worker ``TorchTrainer`` (CPU, the same torch threads), and in this process again; the
Ray median is compared with the median of both plain runs, so a change of background load between
runs shows up as a plain-vs-plain gap (``plain_drift``). Like the project's trainer, the loop talks
to Ray Train only at checkpoints, so the cost of one ``ray.train.report`` call is measured apart
(``report_s``), as are start-up costs (Ray, the worker, the model build); neither is in the ratio.

The only benchmark that needs Ray; it is imported inside the functions.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from vlsa.bench import variants
from vlsa.bench.device import describe, dtype_for
from vlsa.bench.loop import build_train_step
from vlsa.bench.report import Report, fmt_seconds
from vlsa.bench.timing import timed
from vlsa.config import Config, config_from_dict

WORKER_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")


def time_loop(cfg: Config, device: torch.device) -> dict[str, list[float]]:
    """Build the VLSA step, run ``bench.warmup`` untimed and ``bench.repeats`` timed steps."""
    vlsa = variants.vlsa_config(cfg)
    step = build_train_step(vlsa, variants.bench_stage(vlsa), variants.workload(vlsa), device, dtype_for(cfg, device))
    for _ in range(cfg.bench.warmup):
        step()
    times: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(cfg.bench.repeats):
        wall, cpu = timed(step, device)
        times["wall"].append(wall)
        times["cpu"].append(cpu)
    return times


def time_reports(report: Callable[[dict], None], calls: int) -> list[float]:
    """Wall seconds of ``calls`` metrics-only reports."""
    out = []
    for i in range(calls):
        start = time.perf_counter()
        report({"probe": i})
        out.append(time.perf_counter() - start)
    return out


def worker_loop(config: dict[str, Any]) -> None:
    """The Ray Train worker: the same loop, reporting through ``ray.train.report``.

    The timings go in a last report with a (tiny) checkpoint: Ray Train V2's ``Result.metrics`` are
    those of the newest checkpoint.
    """
    import ray.train

    torch.set_num_threads(config["threads"])
    cfg = config_from_dict(config["cfg"])
    times = time_loop(cfg, torch.device("cpu")) | {"report": time_reports(ray.train.report, cfg.bench.repeats)}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "timings.json").write_text(json.dumps(times))
        ray.train.report(times, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def through_ray(cfg: Config, threads: int) -> dict[str, list[float]]:
    """Run ``worker_loop`` in a one-worker CPU ``TorchTrainer`` on a local Ray instance."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = tempfile.mkdtemp(prefix="vlsa-bench-ray-")
    env = {name: os.environ[name] for name in WORKER_ENV if name in os.environ}
    # With the dashboard (Ray's State API): Train's placement-group cleaner polls it, and without it
    # logs a failed query again and again.
    ray.init(num_cpus=max(4, threads + 2))
    try:
        trainer = TorchTrainer(
            worker_loop, train_loop_config={"cfg": cfg.to_dict(), "threads": threads},
            scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": threads}),
            run_config=RunConfig(name="ray-overhead", storage_path=storage, worker_runtime_env={"env_vars": env}),
        )
        metrics = trainer.fit().metrics
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    return {key: list(metrics[key]) for key in ("wall", "cpu", "report")}


def run(cfg: Config, device: torch.device, out_dir: str) -> Report:
    """Plain, Ray Train, plain; report medians, the ratio and the start-up cost."""
    if device.type != "cpu":
        raise ValueError("ray-overhead measures the CPU worker path (ScalingConfig use_gpu=False); use --device cpu")
    threads = torch.get_num_threads()
    plain_a = time_loop(cfg, device)
    started = time.perf_counter()
    ray_times = through_ray(cfg, threads)
    ray_total = time.perf_counter() - started
    plain_b = time_loop(cfg, device)
    med = statistics.median
    plain_wall = med(plain_a["wall"] + plain_b["wall"])
    metrics = {
        "ratio": med(ray_times["wall"]) / plain_wall,
        "cpu_ratio": med(ray_times["cpu"]) / med(plain_a["cpu"] + plain_b["cpu"]),
        "plain_drift": med(plain_b["wall"]) / med(plain_a["wall"]),
        "plain_step_s": plain_wall, "ray_step_s": med(ray_times["wall"]),
        "report_s": med(ray_times["report"]),
        "ray_startup_s": ray_total - sum(ray_times["wall"]) - sum(ray_times["report"]),
    }
    settings = {"preset": cfg.preset, "batch": cfg.bench.batch, "tiles": cfg.bench.tiles, "threads": threads,
                "warmup": cfg.bench.warmup, "repeats": cfg.bench.repeats, "workers": 1, "device": "cpu"}
    lines = [f"step through Ray Train / plain: {metrics['ratio']:.3f} "
             f"(wall clock; CPU-time {metrics['cpu_ratio']:.3f})",
             f"plain step {fmt_seconds(metrics['plain_step_s'])}, Ray Train step {fmt_seconds(metrics['ray_step_s'])}; "
             f"plain run 2 / run 1 {metrics['plain_drift']:.3f}",
             f"one ray.train.report call (metrics only): {fmt_seconds(metrics['report_s'])}",
             f"Ray start-up, worker start and model build outside the timed steps: {metrics['ray_startup_s']:.1f} s"]
    return Report("ray-overhead", metrics, settings, describe(device), lines)
