"""The DeepSpeed CPU patch (``vlsa.model.deepspeed_cpu``) holds for the installed DeepSpeed.

The patch writes into DeepSpeed's op table; these tests fail first when DeepSpeed changes, so the
patch is re-checked before a training run silently compiles the kernel it means to skip.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch

from vlsa.model import deepspeed_cpu

REPO = Path(__file__).resolve().parents[2]


def test_the_installed_and_pinned_deepspeed_is_the_one_the_patch_was_checked_against():
    installed = importlib.metadata.version("deepspeed")
    assert installed == deepspeed_cpu.TESTED_DEEPSPEED, (
        f"DeepSpeed {installed} is installed; vlsa/model/deepspeed_cpu.py was checked against "
        f"{deepspeed_cpu.TESTED_DEEPSPEED}: re-check the patch, then update TESTED_DEEPSPEED")
    pins = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("deepspeed")]
    assert pins == [f"deepspeed=={deepspeed_cpu.TESTED_DEEPSPEED}"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the patch applies where there is no GPU")
def test_on_cpu_the_shared_memory_kernel_is_marked_unavailable_under_the_name_deepspeed_checks():
    deepspeed = deepspeed_cpu.import_deepspeed()
    builder = deepspeed.get_accelerator().create_op_builder("ShareMemCommBuilder")
    assert builder is not None and builder.NAME == deepspeed_cpu.SHM_COMM_OP
    assert deepspeed.ops.__compatible_ops__[builder.NAME] is False
    assert deepspeed.get_accelerator().device_name() == "cpu"
