"""Every projector trains under DeepSpeed ZeRO-3 with all of its parameters partitioned.

ZeRO-3 releases a module's own parameters after its forward and re-gathers them before its backward,
through hooks on the tensors the module returns. At real widths the weight matrices are above the
persistence threshold, so the tiny test model keeps none resident (threshold 0) to exercise that path.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlsa.config import PROJECTORS, ProjectorConfig
from vlsa.model.projectors import build_projector


class ProjectorLoss(nn.Module):
    """A projector and a loss over all three of its outputs."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        # a 4 px input of 2x2 patches; two tiles in a row (anyres: a 4x8 image fills its 1x2 grid)
        self.projector = build_projector(ProjectorConfig(type=kind, heads=2), 8, 16, num_patches=4, image_size=4,
                                         grids=[[1, 2], [2, 1], [2, 2]])

    def forward(self, v_lo: torch.Tensor, v_hi: torch.Tensor) -> torch.Tensor:
        out = self.projector(v_lo, v_hi, image_sizes=torch.tensor([[4, 8]] * v_lo.shape[0]))
        return sum(t.square().mean() for t in out.tokens) + out.cue.square().mean() + out.pooled.square().mean()


def _zero3_engine(model: nn.Module):
    from vlsa.model.deepspeed_cpu import import_deepspeed

    config = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return import_deepspeed().initialize(model=model, optimizer=optimizer, config=config)[0]


def _gathered(engine) -> list[torch.Tensor]:
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        return [p.detach().clone() for p in params]


@pytest.mark.parametrize("kind", PROJECTORS)
def test_projector_trains_under_zero3_with_no_resident_parameters(process_group, kind):
    torch.manual_seed(0)
    engine = _zero3_engine(ProjectorLoss(kind))
    before = _gathered(engine)
    loss = engine(torch.randn(2, 4, 8), torch.randn(2, 2 * 4, 8))
    engine.backward(loss)
    engine.step()
    assert torch.isfinite(loss)
    changed = [not torch.equal(a, b) for a, b in zip(before, _gathered(engine))]
    assert all(changed), f"{changed.count(False)} of {len(changed)} parameters did not train"
