"""One training step in plain PyTorch, as the trainer runs it: forward, backward, clip, AdamW step.

The model is built by ``build_model`` and frozen per the benchmark stage exactly as in training
(``apply_stage``). In bf16 the whole model is cast to bf16 and AdamW keeps its states in bf16 too: the
same matmul work as DeepSpeed's bf16 mode, without its fp32 master copy (memory, not speed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from vlsa.bench.batch import synthetic_batch
from vlsa.bench.flops import Workload
from vlsa.config import Config, StageConfig
from vlsa.model.builder import build_model
from vlsa.model.params import apply_stage


@dataclass
class TrainStep:
    """A model, its optimizer and one fixed batch; ``__call__`` runs one optimizer step."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batch: dict[str, torch.Tensor]
    grad_clip: float

    def __call__(self) -> float:
        """One step; returns the loss."""
        loss = self.model(**self.batch).loss
        loss.backward()
        self.update()
        return float(loss.detach())

    def update(self) -> None:
        """Clip the gradients, take the optimizer step, clear the gradients."""
        if self.grad_clip > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def phases(self, now: Callable[[], float], sync: Callable[[], None]) -> dict[str, float]:
        """One step timed by phase: forward, backward, optimizer (clip + step), each ended by ``sync``."""
        start = now()
        loss = self.model(**self.batch).loss
        sync()
        forward = now()
        loss.backward()
        sync()
        backward = now()
        self.update()
        sync()
        return {"forward": forward - start, "backward": backward - forward, "optimizer": now() - backward}


def build_model_on(cfg: Config, device: torch.device, dtype: torch.dtype):
    """``build_model(cfg)`` moved to ``device`` in ``dtype``."""
    return build_model(cfg).to(device=device, dtype=dtype)


def build_train_step(cfg: Config, stage: StageConfig, work: Workload, device: torch.device,
                     dtype: torch.dtype, seed: int = 0) -> TrainStep:
    """The model of ``cfg`` frozen for ``stage``, AdamW over its groups, and a synthetic batch of ``work``."""
    model = build_model_on(cfg, device, dtype)
    groups = apply_stage(model, stage)
    if not groups:
        raise ValueError(f"stage {stage.name} trains nothing in this model (lr: {sorted(stage.lr)})")
    model.train()
    # the multi-tensor (CPU) or fused (CUDA) update, as an optimised trainer runs it
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(groups, weight_decay=stage.weight_decay, **fast)
    batch = synthetic_batch(model, work, device=device, seed=seed)
    return TrainStep(model, optimizer, batch, cfg.train.grad_clip)
