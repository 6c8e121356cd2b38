"""``step``: training-step time of VLSA vs the LLaVA-NeXT AnyRes baseline at equal batch and LLM.

Both models are built once; steps then alternate VLSA, AnyRes, VLSA, ... after a warm-up, so both
see the same background load. The measured ratio is the median of the per-pair wall-clock ratios
(``cpu_ratio``: the same from process CPU seconds); the FLOP-predicted ratio from
``vlsa.bench.flops`` is printed beside it.
"""

from __future__ import annotations

import torch

from vlsa.bench import flops, variants
from vlsa.bench.device import describe, dtype_for
from vlsa.bench.loop import build_train_step
from vlsa.bench.report import Report, fmt_seconds, table
from vlsa.bench.timing import interleave, paired_ratios, summary
from vlsa.config import Config

VARIANTS = (("vlsa", variants.vlsa_config), ("anyres", variants.anyres_config))


def step_counts(cfg: Config, vocab_size: int | None = None) -> dict[str, flops.FlopCount]:
    """FLOP counts of the VLSA and AnyRes training steps of ``cfg``'s benchmark stage."""
    out = {}
    for name, make in VARIANTS:
        variant = make(cfg)
        dims = flops.ModelDims.from_config(variant, vocab_size)
        trainable = set(variants.bench_stage(variant).lr)
        out[name] = flops.count(dims, variants.workload(variant), trainable)
    return out


def settings(cfg: Config, device: torch.device, dtype: torch.dtype) -> dict:
    """The settings every step-based report prints."""
    stage = variants.bench_stage(cfg)
    return {"preset": cfg.preset, "batch": cfg.bench.batch, "tiles": cfg.bench.tiles,
            "text_tokens": cfg.bench.text_tokens, "stage": stage.name, "trainable": sorted(stage.lr),
            "warmup": cfg.bench.warmup, "repeats": cfg.bench.repeats, "dtype": str(dtype).replace("torch.", ""),
            "device": device.type, "threads": torch.get_num_threads()}


def run(cfg: Config, device: torch.device, out_dir: str) -> Report:
    """Interleaved VLSA / AnyRes steps; report medians, spreads, the measured and the FLOP ratio."""
    dtype = dtype_for(cfg, device)
    steps = {}
    for name, make in VARIANTS:
        variant = make(cfg)
        stage, work = variants.bench_stage(variant), variants.workload(variant)
        steps[name] = build_train_step(variant, stage, work, device, dtype)
    times = interleave(steps, cfg.bench.warmup, cfg.bench.repeats, device)
    counts = step_counts(cfg, vocab_size=len(steps["vlsa"].model.tokenizer))
    wall = paired_ratios(times["vlsa"].wall, times["anyres"].wall)
    metrics = {
        "ratio": wall["median"], "ratio_min": wall["min"], "ratio_max": wall["max"],
        "cpu_ratio": paired_ratios(times["vlsa"].cpu, times["anyres"].cpu)["median"],
        "flop_ratio": counts["vlsa"].total / counts["anyres"].total,
        "vlsa": summary(times["vlsa"].wall), "anyres": summary(times["anyres"].wall),
        "flops": {name: c.total for name, c in counts.items()},
        "visual_tokens": {name: steps[name].model.token_count(cfg.bench.tiles) for name in steps},
    }
    return Report("step", metrics, settings(cfg, device, dtype), describe(device), _lines(metrics, counts))


def _lines(metrics: dict, counts: dict) -> list[str]:
    rows = [[name, metrics["visual_tokens"][name], fmt_seconds(metrics[name]["median_s"]),
             f"{metrics[name]['spread']:.1%}", f"{counts[name].total / 1e9:.3f}"] for name in counts]
    lines = table(["model", "visual tokens", "median step", "spread", "GFLOP/step"], rows)
    lines += ["", f"measured ratio VLSA/AnyRes {metrics['ratio']:.3f} (wall clock, median of per-pair ratios; "
                  f"min {metrics['ratio_min']:.3f}, max {metrics['ratio_max']:.3f})",
              f"CPU-time ratio             {metrics['cpu_ratio']:.3f}",
              f"FLOP-predicted ratio       {metrics['flop_ratio']:.3f}", ""]
    for name, c in counts.items():
        lines += [f"[{name}]", c.formula()]
    return lines
