"""VDEP's doubled pre-training data (paper 003, Sec. 4 "Baseline and Implementation").

"We double the input data to ensure these two strategies receive fair and sufficient training": every
pre-training sample appears twice per epoch, once in VDEP mode (the image-embedding loss only) and once
in plain LLaVA mode (the text loss). Index i < N is sample i in plain mode, index N + i the same sample
in VDEP mode; the length-grouped sampler shuffles all 2N, and the collated batch carries ``vdep_mode``.
"""

from __future__ import annotations

from typing import Any

import torch


class DoubledDataset(torch.utils.data.Dataset):
    """``base`` twice over: the second copy's samples carry ``vdep_mode=True``."""

    def __init__(self, base) -> None:
        self.base = base
        self.lengths = list(base.lengths) * 2

    def __len__(self) -> int:
        return 2 * len(self.base)

    def __getitem__(self, index: int) -> dict:
        n = len(self.base)
        if not 0 <= index < 2 * n:
            raise IndexError(f"index {index} outside the doubled dataset of {2 * n} samples")
        sample = dict(self.base[index % n])
        sample["vdep_mode"] = index >= n
        return sample

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:
        """Everything else (records, stats, skipped counters) is the base dataset's."""
        if name == "base":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)
