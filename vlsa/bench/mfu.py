"""``mfu``: model FLOPs utilisation of the VLSA training step.

MFU = FLOPs of the step counted from the config (``vlsa.bench.flops``, formula printed) / step time /
peak. On CUDA the peak is the data-sheet bf16 peak of the device (A100, H100, H200); a matmul
ceiling is measured on the spot too and MFU is also given against it. On a CPU there is no data
sheet to trust, so the ceiling measured now is the peak; times there are process CPU seconds.

One more step is timed by phase (each part's forward through hooks, backward, optimizer) to show
what dominates.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from vlsa.bench import variants
from vlsa.bench.device import clock, describe, dtype_for, matmul_ceiling, synchronize, table_peak
from vlsa.bench.loop import TrainStep, build_train_step
from vlsa.bench.report import Report, fmt_seconds, table
from vlsa.bench.step import settings, step_counts
from vlsa.bench.timing import interleave, summary
from vlsa.config import Config


def part_modules(model) -> dict[str, torch.nn.Module]:
    """The parts whose forward time is profiled."""
    parts = {"vision": model.vision_tower, "projector": model.projector, "llm": model.language_model}
    if model.recon_head is not None:
        parts |= model.recon_head.trainable_parts()
    return parts


@contextmanager
def forward_timer(parts: dict[str, torch.nn.Module], device: torch.device, seconds: dict[str, float]):
    """Add each part's forward seconds (synchronised, on the device's ``clock``) to ``seconds`` while inside."""
    started: dict[str, float] = {}
    now = clock(device)

    def pre(name):
        def hook(module, args):
            synchronize(device)
            started[name] = now()
        return hook

    def post(name):
        def hook(module, args, output):
            synchronize(device)
            seconds[name] = seconds.get(name, 0.0) + now() - started[name]
        return hook

    handles = [h for name, m in parts.items()
               for h in (m.register_forward_pre_hook(pre(name)), m.register_forward_hook(post(name)))]
    try:
        yield seconds
    finally:
        for h in handles:
            h.remove()


def profile_step(step: TrainStep, device: torch.device) -> dict[str, float]:
    """Share of one step's time per phase: each part's forward, the rest of the forward (splicing,
    loss), the backward pass, and the optimizer (clip + AdamW)."""
    seconds: dict[str, float] = {}
    with forward_timer(part_modules(step.model), device, seconds):
        phases = step.phases(clock(device), lambda: synchronize(device))
    total = sum(phases.values())
    shares = {f"{name} forward": s / total for name, s in seconds.items()}
    shares["rest of forward"] = phases["forward"] / total - sum(shares.values())
    shares["backward"] = phases["backward"] / total
    shares["optimizer"] = phases["optimizer"] / total
    return shares


def peaks(device: torch.device, dtype: torch.dtype) -> dict:
    """The peak MFU is measured against, and the measured matmul ceiling."""
    n = 8192 if device.type == "cuda" else 1024
    ceiling = matmul_ceiling(device, dtype, n=n)
    listed = table_peak(device) if dtype == torch.bfloat16 else None
    if listed is None:
        return {"peak_flops": ceiling, "peak_source": f"measured {n}x{n} {dtype} matmul", "ceiling_flops": ceiling}
    return {"peak_flops": listed[0], "peak_source": listed[1], "ceiling_flops": ceiling}


def run(cfg: Config, device: torch.device, out_dir: str) -> Report:
    """Time the VLSA step, count its FLOPs, divide by time and by the peak."""
    dtype = dtype_for(cfg, device)
    vlsa = variants.vlsa_config(cfg)
    step = build_train_step(vlsa, variants.bench_stage(vlsa), variants.workload(vlsa), device, dtype)
    times = interleave({"vlsa": step}, cfg.bench.warmup, cfg.bench.repeats, device)["vlsa"]
    seconds = summary(times.cpu if device.type == "cpu" else times.wall)
    count = step_counts(cfg, vocab_size=len(step.model.tokenizer))["vlsa"]
    peak = peaks(device, dtype)
    achieved = count.total / seconds["median_s"]
    metrics = {"mfu": achieved / peak["peak_flops"], "mfu_vs_ceiling": achieved / peak["ceiling_flops"],
               "flops_per_step": count.total, "step": seconds, "achieved_flops": achieved, **peak,
               "clock": "process CPU seconds" if device.type == "cpu" else "wall clock",
               "flop_share": {k: v / count.total for k, v in count.by_part().items()},
               "time_share": profile_step(step, device)}
    return Report("mfu", metrics, settings(cfg, device, dtype), describe(device), _lines(metrics, count))


def _lines(m: dict, count) -> list[str]:
    lines = [f"step {fmt_seconds(m['step']['median_s'])} ({m['clock']}, spread {m['step']['spread']:.1%}), "
             f"{m['flops_per_step'] / 1e9:.3f} GFLOP -> {m['achieved_flops'] / 1e9:.2f} GFLOP/s",
             f"peak {m['peak_flops'] / 1e12:.3f} TFLOP/s ({m['peak_source']}); "
             f"measured matmul ceiling {m['ceiling_flops'] / 1e12:.3f} TFLOP/s",
             f"MFU {m['mfu']:.1%}   (vs measured ceiling {m['mfu_vs_ceiling']:.1%})", ""]
    lines += table(["part", "share of step FLOPs"], [[k, f"{v:.1%}"] for k, v in m["flop_share"].items()])
    shares = [[k, f"{v:.1%}"] for k, v in m["time_share"].items()]
    lines += [""] + table(["profiled step", "share of step time"], shares)
    return lines + ["", count.formula()]
