"""``flops``: the FLOP count of the VLSA and AnyRes training steps and of one inference prefill, with formulas.

Nothing is built or timed (only the tokenizer, for the vocabulary size), so this runs at any size,
the real widths included, on any machine.
"""

from __future__ import annotations

import copy

import torch

from vlsa.bench import flops, variants
from vlsa.bench.device import PEAK_BF16, describe
from vlsa.bench.label_flops import images_per_s_bound, label_flops
from vlsa.bench.report import Report
from vlsa.bench.step import step_counts
from vlsa.config import Config


def run(cfg: Config, device: torch.device, out_dir: str) -> Report:
    """Counts for the preset's benchmark stage and workload."""
    counts = step_counts(cfg)
    prefill = {}
    for name, variant in (("vlsa", variants.vlsa_config(cfg)), ("anyres", variants.anyres_config(cfg))):
        dims = flops.ModelDims.from_config(variants.inference_config(variant))
        work = flops.Workload(batch=1, tiles=cfg.bench.tiles, text_tokens=cfg.bench.text_tokens, logits_all=False)
        prefill[name] = flops.count(dims, work).total
    target = recon_target_cost(cfg, counts["vlsa"])
    metrics = {"flop_ratio": counts["vlsa"].total / counts["anyres"].total,
               "step_flops": {k: c.total for k, c in counts.items()},
               "step_flops_by_part": {k: c.by_part() for k, c in counts.items()},
               "prefill_flops_per_image": prefill, "recon_target": target, "label_flops_per_image": label_flops(cfg)}
    lines = [f"training step FLOP ratio VLSA/AnyRes {metrics['flop_ratio']:.3f}",
             f"prefill GFLOP per image: VLSA {prefill['vlsa'] / 1e9:.3f}, AnyRes {prefill['anyres'] / 1e9:.3f}"]
    if target:
        lines.append(f"reconstruction target {target['image_size']} px vs X_Lo's {target['lowres_size']} px: denoiser "
                     f"x{target['denoiser_ratio']:.2f}, VLSA step x{target['step_ratio']:.3f} FLOPs")
    lines += _label_lines(metrics["label_flops_per_image"], cfg)
    lines.append("")
    for name, c in counts.items():
        lines += [f"[{name} training step]", c.formula()]
    stage = variants.bench_stage(cfg)
    settings = {"preset": cfg.preset, "batch": cfg.bench.batch, "tiles": cfg.bench.tiles,
                "text_tokens": cfg.bench.text_tokens, "stage": stage.name, "trainable": sorted(stage.lr)}
    return Report("flops", metrics, settings, describe(device), lines)


def _label_lines(f: dict[str, float], cfg: Config) -> list[str]:
    """The labeling job's cost per image and the images/s each listed GPU's peak allows."""
    bounds = ", ".join(f"{name} {images_per_s_bound(f['total'], peak):.0f}" for name, peak in PEAK_BF16)
    return [f"labeling GFLOP per image ({cfg.model.vq_image_size} px VQ-VAE input, {cfg.model.recon.image_size} px "
            f"VAE input): {f['total'] / 1e9:.3f} (VQ-VAE encoder {f['vq'] / 1e9:.3f}, nearest-code search "
            f"{f['codebook_search'] / 1e9:.3f}, VAE encoder {f['vae'] / 1e9:.3f})",
            f"labeling images/s at each GPU's dense bf16 peak (no implementation exceeds them): {bounds}"]


def recon_target_cost(cfg: Config, count: flops.FlopCount, vocab_size: int | None = None) -> dict:
    """What reconstructing the high-resolution canvas costs over a target of X_Lo's size (the vision input
    side): the denoiser's and the whole VLSA step's FLOP ratios. Empty without reconstruction.

    ``count`` is the VLSA step of ``cfg`` counted with the same ``vocab_size``."""
    dims = flops.ModelDims.from_config(variants.vlsa_config(cfg), vocab_size=1)  # the vocabulary plays no part here
    if dims.denoiser is None:
        return {}
    lowres = copy.deepcopy(cfg)
    lowres.model.recon.image_size = dims.vision.image_size
    small = step_counts(lowres, vocab_size)["vlsa"]
    return {"image_size": cfg.model.recon.image_size, "lowres_size": dims.vision.image_size,
            "denoiser_ratio": count.by_part()["denoiser"] / small.by_part()["denoiser"],
            "step_ratio": count.total / small.total}
