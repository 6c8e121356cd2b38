"""DeepSpeed ZeRO-3 at build time: importing DeepSpeed, and creating modules already partitioned.

Kept in the model layer because building is where partitioning starts: a module created inside
:func:`partitioning` never exists whole on any rank (each keeps ``1/world`` of every parameter).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from vlsa.model.deepspeed_cpu import import_deepspeed


def is_zero3(ds_config: dict[str, Any] | None) -> bool:
    """Whether a DeepSpeed config partitions parameters (ZeRO stage 3)."""
    return bool(ds_config) and ds_config.get("zero_optimization", {}).get("stage") == 3


@contextmanager
def partitioning(zero3: dict[str, Any] | None) -> Iterator[None]:
    """Modules created inside are ZeRO-3 partitioned as they are created (a no-op with ``zero3=None``).

    ``HfDeepSpeedConfig`` stays alive for the whole block: transformers holds it by weak reference
    and, while it lives, builds, resizes and loads its models partitioned itself.
    """
    if zero3 is None:
        yield
        return
    if not is_zero3(zero3):
        raise ValueError(f"partitioning needs a ZeRO stage 3 config, got zero_optimization={zero3.get('zero_optimization')}")
    from transformers.integrations import HfDeepSpeedConfig

    deepspeed = import_deepspeed()
    _join_process_group(deepspeed)
    hf_config = HfDeepSpeedConfig(zero3)
    try:
        with deepspeed.zero.Init(config_dict_or_path=zero3):
            yield
    finally:
        del hf_config


def _join_process_group(deepspeed) -> None:
    """Make DeepSpeed's communication layer use the torch process group (which must exist): zero.Init
    reads the world size from it to check the config's batch arithmetic and to partition."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("a ZeRO-3 build needs a torch.distributed process group (one per worker)")
    if not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=dist.get_backend())


def is_partitioned(param: torch.Tensor) -> bool:
    """Whether ``param`` is a ZeRO-3 parameter (its values live in per-rank partitions)."""
    return hasattr(param, "ds_tensor")
