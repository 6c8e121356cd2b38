"""DeepSpeed on CPU workers: its CPU accelerator, and one entry of its op table set by hand.

The entry is DeepSpeed internals (``deepspeed.ops.__compatible_ops__``), checked against
``TESTED_DEEPSPEED``: ``tests/train/test_deepspeed_cpu.py`` fails when another DeepSpeed is installed
or the entry is gone, so an upgrade re-checks this patch before anything else relies on it.
"""

from __future__ import annotations

import logging
import os

import torch

TESTED_DEEPSPEED = "0.19.8"
"""The DeepSpeed release the CPU patch below was written and tested against (requirements.txt pins it)."""
SHM_COMM_OP = "deepspeed_shm_comm"
"""DeepSpeed's shared-memory all-reduce op, JIT-compiled on first use on CPU."""


def import_deepspeed():
    """DeepSpeed, with its CPU accelerator where there is no GPU (gloo, no op builds).

    On CPU, DeepSpeed's communication layer would JIT-compile a shared-memory all-reduce kernel
    (a C++ toolchain and about a minute on first use) that only its inference path calls; training
    goes through ``torch.distributed``, so the kernel is marked unavailable instead of compiled.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return deepspeed
