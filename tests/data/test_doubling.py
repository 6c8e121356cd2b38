"""VDEP's doubled pre-training data (paper 003): each sample once per mode, every epoch."""

from __future__ import annotations

from collections import Counter

import torch

from vlsa.data.collate import Collator
from vlsa.data.doubling import DoubledDataset
from vlsa.data.sampler import LengthGroupedSampler


class Base(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.lengths, self.epoch, self.stats = [3 + i % 4 for i in range(n)], 0, "stats"

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, i):
        t = self.lengths[i]
        return {"id": f"r{i}", "input_ids": torch.ones(t, dtype=torch.long), "labels": torch.ones(t, dtype=torch.long),
                "ssft_mask": torch.zeros(t, dtype=torch.bool), "pixel_lo": torch.zeros(1, 3, 4, 4),
                "pixel_hi": [torch.zeros(1, 3, 4, 4)], "recon_pixels": torch.zeros(1, 3, 8, 8)}

    def set_epoch(self, epoch):
        self.epoch = epoch


def test_every_sample_is_seen_once_in_each_mode_per_epoch():
    data = DoubledDataset(Base(10))
    assert len(data) == 20 and data.lengths == Base(10).lengths * 2 and data.stats == "stats"
    for rank in range(2):
        sampler = LengthGroupedSampler(data.lengths, 2, world_size=2, rank=rank, seed=0)
        sampler.set_epoch(1)
        data.set_epoch(1)
        assert data.base.epoch == 1
    seen = Counter()
    for rank in range(2):
        sampler = LengthGroupedSampler(data.lengths, 2, world_size=2, rank=rank, seed=0)
        for i in sampler:
            sample = data[i]
            seen[(sample["id"], sample["vdep_mode"])] += 1
    assert seen == Counter({(f"r{i}", mode): 1 for i in range(10) for mode in (False, True)})


def test_the_batch_carries_each_sample_mode():
    data = DoubledDataset(Base(3))
    batch = Collator(pad_id=0)([data[0], data[4], data[5]])
    assert batch["vdep_mode"].tolist() == [False, True, True]
    assert batch["ids"] == ["r0", "r1", "r2"]
    assert "vdep_mode" not in Collator(pad_id=0)([Base(3)[0]])
