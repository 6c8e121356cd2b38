"""The training step on a real DeepSpeed engine: non-finite steps are skipped untouched and counted."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vlsa.model.vlm import VLSAOutput
from vlsa.train.step import NonFiniteError, SkipGuard, StepResult, train_step


class Regressor(nn.Module):
    """A small model with the VLSA output contract; ``poison`` makes the loss or the gradient non-finite."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, input_ids, attention_mask, x, y, poison=None, **extra) -> VLSAOutput:
        loss = (self.net(x) - y).pow(2).mean()
        if poison == "loss":
            loss = loss + torch.tensor(float("nan"))  # NaN loss whose gradient stays finite
        elif poison == "grad":
            loss = loss + torch.sqrt(self.net[0].weight.abs().sum() * 0.0)  # finite loss, NaN gradient
        return VLSAOutput(loss, loss.detach(), None, None, loss.detach(), None, torch.zeros(1))


def _engine(zero_stage: int):
    from vlsa.model.deepspeed_cpu import import_deepspeed
    from vlsa.train.schedule import build_scheduler

    deepspeed = import_deepspeed()
    model = Regressor()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_ratio=0.0)
    config = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
              "gradient_clipping": 1.0, "zero_optimization": {"stage": zero_stage}}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine, optimizer, scheduler


def _batches(seed: int, poison_second: str | None = None) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(2):
        x = torch.randn(2, 4, generator=g)
        out.append({"input_ids": torch.zeros(2, 3, dtype=torch.long),
                    "attention_mask": torch.ones(2, 3, dtype=torch.long),
                    "x": x, "y": x.sum(1, keepdim=True), "poison": poison_second if i == 1 else None})
    return out


def _snapshot(engine, optimizer) -> tuple[list[torch.Tensor], dict]:
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=hasattr(params[0], "ds_id")):
        weights = [p.detach().clone() for p in params]
    state = {k: v.clone() for s in optimizer.state.values() for k, v in s.items() if torch.is_tensor(v)}
    return weights, state


@pytest.mark.parametrize("zero_stage", [2, 3])
@pytest.mark.parametrize("poison", ["loss", "grad"])
def test_non_finite_step_leaves_weights_optimizer_and_schedule_untouched(process_group, zero_stage, poison):
    engine, optimizer, scheduler = _engine(zero_stage)
    first = train_step(engine, _batches(0))
    assert first.applied and math.isfinite(first.grad_norm) and first.samples == 4 and first.tokens == 12
    weights, state = _snapshot(engine, optimizer)
    lr = scheduler.get_last_lr()

    skipped = train_step(engine, _batches(1, poison_second=poison))
    assert not skipped.applied and not math.isfinite(skipped.grad_norm)
    after_weights, after_state = _snapshot(engine, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(weights, after_weights))
    assert state.keys() == after_state.keys() and all(torch.equal(state[k], after_state[k]) for k in state)
    assert scheduler.get_last_lr() == lr  # the schedule does not advance on a skipped step

    again = train_step(engine, _batches(2))
    assert again.applied and math.isfinite(again.losses["loss"])
    assert not all(torch.equal(a, b) for a, b in zip(weights, _snapshot(engine, optimizer)[0]))


def test_losses_are_averaged_over_micro_batches(process_group):
    engine, _, _ = _engine(2)
    result = train_step(engine, _batches(0))
    assert set(result.losses) == {"loss", "loss_lm", "loss_lm_sft"}  # parts that are None are left out
    assert result.losses["loss"] == pytest.approx(result.losses["loss_lm"])
    with pytest.raises(ValueError, match="a step needs 2 micro-batches"):
        train_step(engine, _batches(0)[:1])


def test_guard_counts_skips_and_stops_after_k_in_a_row():
    ok = StepResult(True, {"loss": 1.0}, 0.5, 4, 12)
    bad = StepResult(False, {"loss": float("nan")}, float("nan"), 4, 12)
    guard = SkipGuard(limit=2, where="stage stage1 ")
    for step, result in enumerate([ok, bad, ok, bad], start=1):
        guard.update(result, step)
    assert (guard.total, guard.consecutive) == (2, 1)
    with pytest.raises(NonFiniteError, match=r"stage stage1 step 5: 2 consecutive optimizer steps had a non-finite "
                                             r"loss or gradient \(train.max_consecutive_skips=2\); last loss=nan"):
        guard.update(bad, 5)
    restored = SkipGuard(limit=2)
    restored.load_state_dict(guard.state_dict())
    assert (restored.total, restored.consecutive) == (3, 2)
