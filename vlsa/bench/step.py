"""``step``: training-step time of VLSA vs the LLaVA-NeXT AnyRes baseline at equal batch and LLM.

Both models are built once; steps then alternate VLSA, AnyRes, VLSA, ... after a warm-up, so both
see the same background load. The measured ratio is the median of the per-pair wall-clock ratios
(``cpu_ratio``: the same from process CPU seconds); the FLOP-predicted ratio from
``vlsa.bench.flops`` is printed beside it. Memory (``vlsa.bench.memory``): the process peak (CUDA:
over the warm-up and timed steps; CPU: peak resident set since the process started), then per
variant what it keeps between steps and, on CUDA, what one more untimed step adds; and, computed, the
largest LM-logits tensor the chunked loss avoids (on CUDA the measured step peak of each
``model.llm.loss_chunks`` setting shows it too: run once with ``--set model.llm.loss_chunks=0``).
"""

from __future__ import annotations

import torch

from vlsa.bench import flops, memory, variants
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
    """Interleaved VLSA / AnyRes steps; report medians, spreads, the measured and the FLOP ratio, memory."""
    dtype = dtype_for(cfg, device)
    steps = {}
    for name, make in VARIANTS:
        variant = make(cfg)
        stage, work = variants.bench_stage(variant), variants.workload(variant)
        steps[name] = build_train_step(variant, stage, work, device, dtype)
    memory.reset_peak(device)  # CUDA: the process peak covers the warm-up and timed steps only
    times = interleave(steps, cfg.bench.warmup, cfg.bench.repeats, device)
    process_peak, peak_source = memory.process_peak(device)  # read before the memory steps reset it
    counts = step_counts(cfg, vocab_size=len(steps["vlsa"].model.tokenizer))
    wall = paired_ratios(times["vlsa"].wall, times["anyres"].wall)
    metrics = {
        "ratio": wall["median"], "ratio_min": wall["min"], "ratio_max": wall["max"],
        "cpu_ratio": paired_ratios(times["vlsa"].cpu, times["anyres"].cpu)["median"],
        "flop_ratio": counts["vlsa"].total / counts["anyres"].total,
        "vlsa": summary(times["vlsa"].wall), "anyres": summary(times["anyres"].wall),
        "flops": {name: c.total for name, c in counts.items()},
        "visual_tokens": {name: steps[name].model.token_count(cfg.bench.tiles) for name in steps},
        "memory": {name: memory.variant_memory(step, device) for name, step in steps.items()},
        "lm_logits": {name: memory.lm_logits(step) for name, step in steps.items()},
        "process_peak_gib": process_peak, "process_peak_source": peak_source,
    }
    return Report("step", metrics, settings(cfg, device, dtype), describe(device), _lines(metrics, counts))


def _lines(metrics: dict, counts: dict) -> list[str]:
    rows = [[name, metrics["visual_tokens"][name], fmt_seconds(metrics[name]["median_s"]),
             f"{metrics[name]['spread']:.1%}", f"{counts[name].total / 1e9:.3f}",
             *(_gib(metrics["memory"][name][k]) for k in ("resident_gib", "step_gib", "peak_gib"))]
            for name in counts]
    lines = table(["model", "visual tokens", "median step", "spread", "GFLOP/step",
                   "resident", "step adds", "peak alone"], rows)
    lines += ["", (f"measured ratio VLSA/AnyRes {metrics['ratio']:.3f} (wall clock, median of per-pair ratios; "
                   f"min {metrics['ratio_min']:.3f}, max {metrics['ratio_max']:.3f})"),
              f"CPU-time ratio             {metrics['cpu_ratio']:.3f}",
              f"FLOP-predicted ratio       {metrics['flop_ratio']:.3f}",
              (f"process peak memory        {_gib(metrics['process_peak_gib'])} "
               f"({metrics['process_peak_source']}; both variants resident)"),
              ("memory: resident = parameters, buffers, optimizer states and batch; step adds = peak allocated "
               "by one more untimed step (CUDA only); peak alone = their sum"),
              *_logits_lines(metrics["lm_logits"]), ""]
    for name, c in counts.items():
        lines += [f"[{name}]", c.formula()]
    return lines


def _logits_lines(logits: dict) -> list[str]:
    """The largest fp32 LM-logits tensor per variant: plain head vs chunked loss (computed)."""
    lines = []
    for name, x in logits.items():
        how = "in use" if x["configured"] else "not in use: set model.llm.loss_chunks"
        shape = f"B={x['batch']}, T={x['tokens']}, V={x['vocab']}, {x['supervised']} supervised"
        lines.append(f"LM logits [{name}] ({shape}): plain head {_mib(x['plain_bytes'])} fp32, chunked loss "
                     f"({x['chunks']} chunks, {how}) {_mib(x['chunked_bytes'])}: {_mib(x['avoided_bytes'])} avoided "
                     "(computed)")
    return lines


def _mib(value: int) -> str:
    return f"{value / 2**20:.2f} MiB"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} GiB"
