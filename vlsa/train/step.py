"""One optimizer step over a window of micro-batches, and the guard against non-finite steps.

A step whose loss or gradient is NaN/inf on any worker is skipped: DeepSpeed's ZeRO optimizers
(stages 1-3) check the global gradient norm before updating and, when it is not finite, drop the
gradients without touching the weights, the optimizer state or the learning-rate schedule. A
non-finite loss is turned into NaN gradients before the backward pass, so that a loss whose
gradient happens to stay finite still never updates the model. :class:`SkipGuard` counts skipped
steps and stops the run after ``train.max_consecutive_skips`` in a row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

LOSS_KEYS = ("loss", "loss_lm", "loss_rec", "loss_vdep", "loss_lm_sft", "loss_lm_ssft")


class NonFiniteError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


@dataclass
class StepResult:
    """What one optimizer step did, averaged over its micro-batches and all workers."""

    applied: bool
    """False when the step was skipped (non-finite loss or gradient somewhere)."""
    losses: dict[str, float]
    """Mean of each loss part (``LOSS_KEYS``) over the micro-batches that had it; absent parts are left out."""
    grad_norm: float
    """Global gradient norm before clipping (inf or NaN on a skipped step)."""
    samples: int
    """Samples of this step over all workers."""
    tokens: int
    """LLM input tokens of this step over all workers."""


@dataclass
class SkipGuard:
    """Counts skipped steps; raises :class:`NonFiniteError` after ``limit`` consecutive ones."""

    limit: int
    total: int = 0
    consecutive: int = 0
    where: str = field(default="")

    def record(self, result: StepResult) -> None:
        """Count one optimizer step (skipped or not)."""
        if result.applied:
            self.consecutive = 0
        else:
            self.total += 1
            self.consecutive += 1

    def check(self, result: StepResult, step: int) -> None:
        """Raise when the recorded steps end in ``limit`` skips (``step``: 1-based index in the stage)."""
        if self.consecutive >= self.limit:
            raise NonFiniteError(
                f"{self.where}step {step}: {self.consecutive} consecutive optimizer steps had a non-finite loss or "
                f"gradient (train.max_consecutive_skips={self.limit}); last loss={result.losses.get('loss')}, "
                f"grad_norm={result.grad_norm}. Lower the learning rate or check the data."
            )

    def update(self, result: StepResult, step: int) -> None:
        """``record`` then ``check``."""
        self.record(result)
        self.check(result, step)

    def state_dict(self) -> dict[str, int]:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.total, self.consecutive = int(state["total"]), int(state["consecutive"])


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Tensors of ``batch`` moved to ``device``; other values (ids, ...) kept as they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _text_tokens(batch: dict[str, Any]) -> int:
    return int(batch["attention_mask"].sum())


def train_step(engine, micro_batches: Sequence[dict[str, Any]], *,
               tokens_of: Callable[[dict[str, Any]], int] = _text_tokens) -> StepResult:
    """Forward/backward every micro-batch of one accumulation window, then the optimizer step.

    ``engine`` is a DeepSpeed engine whose module returns an object with the ``LOSS_KEYS``
    attributes (``VLSAOutput``); ``len(micro_batches)`` must equal its accumulation steps.
    """
    expected = engine.gradient_accumulation_steps()
    if len(micro_batches) != expected:
        raise ValueError(
            f"a step needs {expected} micro-batches (gradient_accumulation_steps), got {len(micro_batches)}"
        )
    sums = torch.zeros(len(LOSS_KEYS), 2, dtype=torch.float64)  # (loss part, [sum, count])
    samples = tokens = 0
    for batch in micro_batches:
        out = engine(**batch)
        _accumulate(sums, out)
        loss = out.loss
        if not torch.isfinite(loss.detach()).all():
            loss = loss * float("nan")  # NaN gradients everywhere: the optimizer must skip this step
        engine.backward(loss)
        engine.step()
        samples += int(batch["input_ids"].shape[0])
        tokens += tokens_of(batch)
    counts = torch.tensor([samples, tokens], dtype=torch.float64)
    sums, counts = _all_reduce_sum(sums, engine.device), _all_reduce_sum(counts, engine.device)
    return StepResult(
        applied=bool(engine.was_step_applied()),
        losses={k: float(s / n) for k, (s, n) in zip(LOSS_KEYS, sums.tolist()) if n > 0},
        grad_norm=_as_float(engine.get_global_grad_norm()),
        samples=int(counts[0]),
        tokens=int(counts[1]),
    )


def _accumulate(sums: torch.Tensor, out) -> None:
    for i, key in enumerate(LOSS_KEYS):
        value = getattr(out, key)
        if value is not None:
            sums[i, 0] += float(value.detach())
            sums[i, 1] += 1


def _all_reduce_sum(tensor: torch.Tensor, device) -> torch.Tensor:
    """Sum over workers (a no-op without a process group); NCCL needs the tensor on the GPU."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.to(device)
        dist.all_reduce(tensor)
    return tensor.cpu()


def _as_float(value) -> float:
    if value is None:
        return math.nan
    return float(value.item() if isinstance(value, torch.Tensor) else value)
