"""Learning-rate schedule: linear warm-up then cosine decay to zero (Tab. 7: warm-up 0.03, cosine).

The multiplier is applied to every parameter group's own base learning rate, so the per-module
rates of a stage (vision 2e-6, the rest 1e-5, ...) keep their ratio throughout. Unlike the usual
Hugging Face formula, the first warm-up step already has a non-zero rate: short runs do not waste
their first step.
"""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up length: ``ceil(ratio x total)`` steps (0 when the ratio is 0)."""
    return math.ceil(warmup_ratio * total_steps)


class WarmupCosine:
    """``step -> lr multiplier`` in [0, 1]; a callable object so the scheduler state can be saved."""

    def __init__(self, total_steps: int, warmup_ratio: float) -> None:
        if total_steps < 1:
            raise ValueError(f"a schedule needs total_steps >= 1, got {total_steps}")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.total_steps = total_steps
        self.warmup = warmup_steps(total_steps, warmup_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        decay_steps = max(1, self.total_steps - self.warmup)
        progress = min(1.0, (step - self.warmup) / decay_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, total_steps: int, warmup_ratio: float):
    """A ``LambdaLR`` stepping :class:`WarmupCosine` once per applied optimizer step."""
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, WarmupCosine(total_steps, warmup_ratio))


def stage_total_steps(stage, num_samples: int, world_size: int) -> int:
    """Optimizer steps of a stage: ``max_steps`` when set, else ``epochs`` passes over ``num_samples``.

    One epoch is ``ceil(num_samples / (micro_batch x world_size))`` micro-steps on every worker (the
    sampler pads the last one); an optimizer step takes ``accumulation`` of them.
    """
    if stage.max_steps > 0:
        return stage.max_steps
    if num_samples < 1:
        raise ValueError(f"stage {stage.name} has no training samples")
    micro_steps = math.ceil(num_samples / (stage.micro_batch * world_size))
    return max(1, math.floor(stage.epochs * micro_steps / stage.accumulation(world_size)))
