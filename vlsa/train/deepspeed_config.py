"""The DeepSpeed config of one stage, as a pure function of the run config.

Everything DeepSpeed needs is derived here from ``Config`` and the stage, so a run is described by
its YAML alone and the dict is unit-tested (no JSON full of ``"auto"``). The optimizer is not part
of it: the training loop passes a ``torch.optim.AdamW`` to ``deepspeed.initialize``, which works on
CPU and GPU alike without building DeepSpeed's fused ops. Activation checkpointing is applied to
the Hugging Face modules themselves (``activation_checkpointing_enable``), per stage and part, so it is
a setting the loop reads, not a DeepSpeed section.
"""

from __future__ import annotations

from typing import Any

from vlsa.config import Config, ConfigError, StageConfig

# Quiet DeepSpeed's own progress lines; the loop logs every step to MLflow instead.
_STEPS_PER_PRINT = 1_000_000_000


def use_bf16(cfg: Config, device: str) -> bool:
    """bf16 when asked for, or with ``precision=auto`` on a GPU; fp32 on CPU by default."""
    if cfg.train.precision == "auto":
        return device.startswith("cuda")
    return cfg.train.precision == "bf16"


def zero_section(stage: StageConfig, device: str, cfg: Config | None = None) -> dict[str, Any]:
    """The ``zero_optimization`` block of a stage (``cfg``: the ZeRO-3 gathering limits of ``train``)."""
    zero: dict[str, Any] = {"stage": stage.zero_stage, "contiguous_gradients": True}
    # Overlapping communication with compute needs a separate stream; CPU has none.
    zero["overlap_comm"] = device.startswith("cuda")
    if stage.zero_stage == 3:
        # Stage ends save full weights (the next stage and the export start from them).
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if cfg is not None:  # DeepSpeed's defaults (1e9 values each) would keep a model below 1e9 gathered
            zero["stage3_max_live_parameters"] = cfg.train.zero3_live_parameters
            zero["stage3_max_reuse_distance"] = cfg.train.zero3_reuse_distance
            zero["stage3_prefetch_bucket_size"] = cfg.train.zero3_prefetch_values
            zero["reduce_bucket_size"] = cfg.train.zero3_reduce_bucket_values
    return zero


def deepspeed_config(cfg: Config, stage: StageConfig, world_size: int, device: str) -> dict[str, Any]:
    """The DeepSpeed config dict of ``stage`` trained by ``world_size`` workers on ``device`` (cpu/cuda).

    Gradient accumulation comes from the stage's global batch: ``global_batch == micro_batch x
    accumulation x world_size`` (a ConfigError when it does not divide).
    """
    if world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {world_size}")
    if not device.startswith(("cpu", "cuda")):
        raise ConfigError(f"device must be cpu or cuda, got {device!r}")
    bf16 = use_bf16(cfg, device)
    return {
        "train_batch_size": stage.global_batch,
        "train_micro_batch_size_per_gpu": stage.micro_batch,
        "gradient_accumulation_steps": stage.accumulation(world_size),
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": zero_section(stage, device, cfg),
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "steps_per_print": _STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
    }
