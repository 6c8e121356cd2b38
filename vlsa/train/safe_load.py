"""DeepSpeed checkpoints read without running code: ``torch.load(..., weights_only=True)``.

DeepSpeed reads its checkpoint files through the engine's ``checkpoint_engine``, whose stock
version unpickles arbitrary objects (``weights_only=False``): whoever can write a checkpoint could
run code on every training node. :func:`load_checkpoint` swaps in an engine that loads with
``weights_only=True``, allowing only the few plain DeepSpeed types a checkpoint holds. A file that
needs anything else fails to load with an error that names the type, and nothing of it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def safe_globals() -> list[Any]:
    """The non-tensor types DeepSpeed writes into its checkpoint files (data only, no code on load)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address]


def weights_only_engine():
    """A DeepSpeed checkpoint engine whose ``load`` is ``torch.load(..., weights_only=True)``."""
    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    return WeightsOnlyCheckpointEngine()


def load_checkpoint(engine, folder: str | Path, tag: str) -> None:
    """``engine.load_checkpoint`` (module, optimizer, LR scheduler) through the weights-only reader."""
    saved = engine.checkpoint_engine
    engine.checkpoint_engine = weights_only_engine()
    try:
        path, _ = engine.load_checkpoint(str(folder), tag=tag, load_module_strict=False,
                                         load_optimizer_states=True, load_lr_scheduler_states=True)
    finally:
        engine.checkpoint_engine = saved  # saving keeps DeepSpeed's own writer
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {folder} (tag {tag})")
