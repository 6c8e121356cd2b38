"""One stage's training data on one worker: dataset, resumable sampler, loader, micro-batch stream.

Every worker builds the same dataset and the same global sample order (the sampler is a pure
function of seed and epoch), so resuming only needs the sampler's ``{epoch, position}``. The
loader gets its own RNG so that creating an iterator (at an epoch start or on resume) never draws
from the global torch RNG that the model's noise uses: resumed and uninterrupted runs see the same
random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch

from vlsa.config import Config, StageConfig
from vlsa.data.collate import Collator
from vlsa.data.dataset import build_dataset
from vlsa.data.doubling import DoubledDataset
from vlsa.data.sampler import LengthGroupedSampler
from vlsa.model.params import is_pretraining
from vlsa.train.schedule import stage_total_steps


@dataclass
class StageData:
    """Dataset, sampler and loader of one stage on one worker."""

    dataset: Any
    sampler: Any
    loader: Any
    total_steps: int
    """Optimizer steps of the stage (``max_steps``, or ``epochs`` over the data)."""

    def micro_batches(self) -> Iterator[dict]:
        """Collated micro-batches forever, epoch after epoch, from the sampler's current position."""
        while True:
            self.dataset.set_epoch(self.sampler.epoch)
            for batch in self.loader:
                self.sampler.advance(len(batch["ids"]))  # counted before use: a checkpoint never repeats it
                yield batch
            self.sampler.set_epoch(self.sampler.epoch + 1)

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)
        self.dataset.set_epoch(self.sampler.epoch)


def build_stage_data(cfg: Config, stage: StageConfig, tokenizer, *, rank: int, world_size: int,
                     validation: str = "") -> StageData:
    """The data of ``stage`` for worker ``rank`` of ``world_size``; ``validation``: the manifest the
    driver checked (the worker then reads no image before training)."""
    from torch.utils.data import DataLoader

    # Sizes come from the config, not the model, so loader processes never receive a model copy.
    dataset = build_dataset(cfg, stage.data, tokenizer, validation=validation)
    if doubles_for_vdep(cfg, stage):
        dataset = DoubledDataset(dataset)
    sampler = LengthGroupedSampler(dataset.lengths, stage.micro_batch, world_size=world_size, rank=rank,
                                   seed=cfg.train.seed)
    loader = DataLoader(
        dataset, batch_size=stage.micro_batch, sampler=sampler, collate_fn=Collator(tokenizer.pad_token_id),
        num_workers=cfg.train.loader_workers, generator=torch.Generator().manual_seed(cfg.train.seed),
        persistent_workers=False, drop_last=False,
    )
    return StageData(dataset, sampler, loader, stage_total_steps(stage, len(dataset), world_size))


def doubles_for_vdep(cfg: Config, stage: StageConfig) -> bool:
    """VDEP pre-training stages see every sample twice, once per mode (paper 003)."""
    vdep = cfg.model.vdep
    return vdep.enabled and vdep.split_batch and is_pretraining(stage)


def take(stream: Iterator[dict], count: int) -> list[dict]:
    """The next ``count`` micro-batches of one optimizer step."""
    return [next(stream) for _ in range(count)]
