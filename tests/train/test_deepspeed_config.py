"""The DeepSpeed config is a pure function of the run config; DeepSpeed itself accepts it."""

from __future__ import annotations

import pytest

import vlsa
from vlsa.config import ConfigError
from vlsa.train.deepspeed_config import deepspeed_config, use_bf16


BATCH = ("train.stages.0.global_batch=16", "train.stages.0.micro_batch=8",
         "train.stages.1.global_batch=16", "train.stages.1.micro_batch=8")


def test_tiny_stage1_on_two_cpu_workers():
    cfg = vlsa.load_config("tiny", BATCH)
    assert deepspeed_config(cfg, cfg.train.stages[0], 2, "cpu") == {
        "train_batch_size": 16,
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 2, "contiguous_gradients": True, "overlap_comm": False},
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


def test_stage2_is_zero3_with_full_weights_saved_and_accumulation_from_global_batch():
    cfg = vlsa.load_config("tiny", [*BATCH, "train.grad_clip=0.5"])
    ds = deepspeed_config(cfg, cfg.train.stages[1], 1, "cpu")
    assert ds["zero_optimization"] == {"stage": 3, "contiguous_gradients": True, "overlap_comm": False,
                                       "stage3_gather_16bit_weights_on_model_save": True,
                                       "stage3_max_live_parameters": 10**9, "stage3_max_reuse_distance": 10**9,
                                       "stage3_prefetch_bucket_size": 5 * 10**7, "reduce_bucket_size": 5 * 10**8}
    small = vlsa.load_config("tiny", [*BATCH, "train.zero3_live_parameters=1000", "train.zero3_reuse_distance=0",
                                      "train.zero3_prefetch_values=0", "train.zero3_reduce_bucket_values=2000"])
    zero = deepspeed_config(small, small.train.stages[1], 1, "cpu")["zero_optimization"]
    assert zero["stage3_max_live_parameters"] == 1000 and zero["stage3_max_reuse_distance"] == 0
    assert zero["stage3_prefetch_bucket_size"] == 0 and zero["reduce_bucket_size"] == 2000
    assert ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 0.5


def test_llava_presets_use_bf16_on_gpu_and_fp32_on_cpu():
    cfg = vlsa.load_config("llava15_hd_vicuna7b")
    stage1, stage2 = cfg.train.stages
    gpu = deepspeed_config(cfg, stage1, 8, "cuda")
    assert gpu["bf16"] == {"enabled": True} and gpu["zero_optimization"]["overlap_comm"] is True
    assert gpu["train_batch_size"] == 128 and gpu["gradient_accumulation_steps"] == 1  # 16 x 1 x 8
    assert deepspeed_config(cfg, stage2, 4, "cuda")["gradient_accumulation_steps"] == 4  # 64 = 4 x 4 x 4
    assert deepspeed_config(cfg, stage1, 8, "cpu")["bf16"] == {"enabled": False}
    assert use_bf16(vlsa.load_config("llava15_hd_vicuna7b", ["train.precision=bf16"]), "cpu")
    assert not use_bf16(vlsa.load_config("llava15_hd_vicuna7b", ["train.precision=fp32"]), "cuda")


def test_global_batch_that_does_not_divide_names_the_numbers():
    cfg = vlsa.load_config("tiny", [*BATCH, "train.stages.0.global_batch=20"])
    with pytest.raises(ConfigError, match="global_batch 20 is not a multiple of micro_batch 8 x workers 2"):
        deepspeed_config(cfg, cfg.train.stages[0], 2, "cpu")
    with pytest.raises(ConfigError, match="world_size must be >= 1, got 0"):
        deepspeed_config(cfg, cfg.train.stages[1], 0, "cpu")
    with pytest.raises(ConfigError, match="device must be cpu or cuda, got 'mps'"):
        deepspeed_config(cfg, cfg.train.stages[1], 1, "mps")


def test_zero_stage_0_is_rejected_at_load():
    # ZeRO-0 keeps a plain optimizer that would apply a NaN step instead of skipping it.
    with pytest.raises(ConfigError, match="zero_stage=0 is not one of"):
        vlsa.load_config("tiny", ["train.stages.0.zero_stage=0"])


def test_deepspeed_accepts_the_config():
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = vlsa.load_config("tiny", BATCH)
    for stage in cfg.train.stages:
        parsed = DeepSpeedConfig(deepspeed_config(cfg, stage, 1, "cpu"))  # world size 1 without a process group
        assert parsed.zero_optimization_stage == stage.zero_stage
        assert parsed.train_batch_size == stage.global_batch and parsed.gradient_accumulation_steps == 2
        assert parsed.gradient_clipping == cfg.train.grad_clip
