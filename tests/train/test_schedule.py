"""Warm-up + cosine schedule and the number of steps of a stage."""

from __future__ import annotations

import math

import pytest
import torch

import vlsa
from vlsa.train.loop import eta
from vlsa.train.schedule import WarmupCosine, build_scheduler, stage_total_steps, warmup_steps


def test_warmup_then_cosine_to_zero():
    schedule = WarmupCosine(total_steps=10, warmup_ratio=0.3)
    assert schedule.warmup == 3
    values = [schedule(s) for s in range(10)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]  # the first step already learns
    assert values[4] == pytest.approx(0.5 * (1 + math.cos(math.pi / 7)))
    assert values[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 6 / 7)))
    assert all(a >= b for a, b in zip(values[3:], values[4:]))  # decays monotonically
    assert schedule(10) == 0.0 and schedule(50) == 0.0


def test_no_warmup_and_paper_ratio():
    assert WarmupCosine(5, 0.0)(0) == 1.0
    assert warmup_steps(1000, 0.03) == 30 and warmup_steps(10, 0.03) == 1
    with pytest.raises(ValueError, match="total_steps >= 1, got 0"):
        WarmupCosine(0, 0.03)


def test_scheduler_scales_every_group_by_the_same_factor():
    weights = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": [weights[0]], "lr": 1e-5}, {"params": [weights[1]], "lr": 2e-6}])
    scheduler = build_scheduler(opt, total_steps=4, warmup_ratio=0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-5 / 3, 2e-6 / 3])
    opt.step()
    scheduler.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-5 / 3, 4e-6 / 3])
    state = scheduler.state_dict()
    assert state["last_epoch"] == 1 and state["lr_lambdas"][0] == {"total_steps": 4, "warmup": 2}


def test_stage_steps_from_epochs_or_max_steps():
    batch = [f"train.stages.{i}.{key}" for i in (0, 1) for key in ("global_batch=16", "micro_batch=8")]
    cfg = vlsa.load_config("tiny", [*batch, "train.stages.0.epochs=1", "train.stages.1.epochs=3"])
    stage1, stage2 = cfg.train.stages
    assert stage_total_steps(stage1, 600, 2) == 38  # ceil(600 / 16) = 38 micro-steps, 1 each
    assert stage_total_steps(stage1, 600, 1) == 37  # 75 micro-steps of 8, 2 per step (the last one is dropped)
    assert stage_total_steps(stage2, 600, 2) == 114  # 3 epochs
    capped = vlsa.load_config("tiny", [*batch, "train.stages.0.max_steps=5"]).train.stages[0]
    assert stage_total_steps(capped, 600, 2) == 5
    assert stage_total_steps(stage1, 3, 2) == 1  # fewer samples than one step: still one step
    with pytest.raises(ValueError, match="stage stage1 has no training samples"):
        stage_total_steps(stage1, 0, 2)


def test_progress_lines_state_the_time_left_at_the_pace_so_far():
    assert eta(30.0, 3, 6) == "1:00"
    assert eta(5.0, 10, 125) == "1:02"
    assert eta(0.0, 0, 10) == "?"
