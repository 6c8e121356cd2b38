"""The configs a benchmark compares: VLSA and the LLaVA-NeXT AnyRes baseline from one preset.

Both share every size (vision tower, LLM, batch); AnyRes differs only in ``model.projector.type=anyres``,
``model.recon.enabled=false`` and, since it has no Epigone or denoiser, learning rates for neither.
"""

from __future__ import annotations

from typing import Any, Iterable

from vlsa.bench.flops import Workload
from vlsa.config import Config, StageConfig, load_config

SMOKE = ("bench.warmup=1", "bench.repeats=2", "bench.label_images=4", "bench.latency_grids=[1, 2]")
"""Overrides of ``--smoke``: the fewest runs that still exercise every code path."""

RECON_MODULES = ("epigone", "denoiser")


def bench_config(preset: str, overrides: Iterable[str] = (), smoke: bool = False) -> Config:
    """The preset with ``--set`` overrides (and the smoke overrides last)."""
    return load_config(preset, [*overrides, *(SMOKE if smoke else ())])


def _variant(cfg: Config, projector: str, recon: bool) -> Config:
    overrides: dict[str, Any] = {"model.projector.type": projector, "model.recon.enabled": recon}
    if not recon:
        overrides["model.recon.conditioning"] = "projector"
        for i, stage in enumerate(cfg.train.stages):
            overrides[f"train.stages.{i}.lr"] = {k: v for k, v in stage.lr.items() if k not in RECON_MODULES}
    return cfg.with_overrides(overrides)


def vlsa_config(cfg: Config) -> Config:
    """VLSA: the SA-Perceiver with reconstruction on (the preset's other settings kept)."""
    return _variant(cfg, "sa_perceiver", True)


def anyres_config(cfg: Config) -> Config:
    """The LLaVA-NeXT AnyRes baseline of the same sizes: all tiles to the LLM, no reconstruction."""
    return _variant(cfg, "anyres", False)


def inference_config(cfg: Config) -> Config:
    """The same model as loaded for inference: no VAE, denoiser or Epigone."""
    return _variant(cfg, cfg.model.projector.type, False)


def bench_stage(cfg: Config) -> StageConfig:
    """The train stage whose trainable modules and learning rates the step uses (``bench.stage``)."""
    stages, index = cfg.train.stages, cfg.bench.stage
    if not -len(stages) <= index < len(stages):
        raise ValueError(f"bench.stage={index} is not an index of train.stages (there are {len(stages)})")
    return stages[index]


def workload(cfg: Config, batch: int | None = None) -> Workload:
    """The step's workload from ``bench`` (tiles checked against ``model.encoding.max_tiles``)."""
    bench, cap = cfg.bench, cfg.model.encoding.max_tiles
    if bench.tiles > cap:
        raise ValueError(f"bench.tiles={bench.tiles} exceeds model.encoding.max_tiles={cap}")
    return Workload(batch=batch or bench.batch, tiles=bench.tiles, text_tokens=bench.text_tokens)
