"""Length-grouped distributed sampler: the same global order on every rank, resumable mid-epoch.

Every rank computes the whole epoch's order from (seed, epoch) alone, so no communication is needed
and the ranks always agree. Shuffled indices are cut into megabatches of ``group_steps`` optimizer
micro-steps; within a megabatch samples are sorted by length so each micro-step holds samples of
similar length (less padding), then the micro-steps are shuffled. The step holding the longest
sample goes first, so an out-of-memory shows at once. Each micro-step gives ``micro_batch``
consecutive samples to every rank; the order is padded by repeating indices so all ranks run the
same number of steps.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Indices for one rank; use with ``DataLoader(batch_size=micro_batch, sampler=...)``."""

    def __init__(self, lengths: list[int], micro_batch: int, *, world_size: int = 1, rank: int = 0,
                 seed: int = 0, group_steps: int = 8, group_by_length: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if micro_batch < 1 or not lengths:
            raise ValueError(f"need micro_batch >= 1 and some samples, got {micro_batch} and {len(lengths)}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.micro_batch, self.world_size, self.rank = micro_batch, world_size, rank
        self.seed, self.group_steps, self.group_by_length = seed, group_steps, group_by_length
        self.epoch, self.position = 0, 0

    @property
    def step_size(self) -> int:
        """Samples per micro-step over all ranks."""
        return self.micro_batch * self.world_size

    def __len__(self) -> int:
        """Samples this rank yields in a full epoch."""
        return math.ceil(len(self.lengths) / self.step_size) * self.micro_batch

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning."""
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict:
        """Epoch and samples this rank has already consumed (store with the checkpoint)."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next iteration continues after ``state['position']`` samples of its epoch."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def advance(self, samples: int) -> None:
        """Record that this rank consumed ``samples`` more samples (call after each micro-step)."""
        self.position += samples

    def global_order(self) -> np.ndarray:
        """(steps, world_size, micro_batch) indices of the epoch; identical on every rank."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))
        order = rng.permutation(len(self.lengths))
        total = math.ceil(len(order) / self.step_size) * self.step_size
        order = np.concatenate([order, order[: total - len(order)]]) if total > len(order) else order
        while len(order) < total:  # fewer samples than one step: repeat as often as needed
            order = np.concatenate([order, order])[:total]
        steps = order.reshape(-1, self.step_size)
        if self.group_by_length:
            steps = self._group(steps, rng)
        return steps.reshape(-1, self.world_size, self.micro_batch)

    def _group(self, steps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        grouped = []
        for start in range(0, len(steps), self.group_steps):
            mega = steps[start : start + self.group_steps].ravel()
            mega = mega[np.argsort(-self.lengths[mega], kind="stable")]
            grouped.append(mega.reshape(-1, self.step_size))
        steps = np.concatenate(grouped)[rng.permutation(len(steps))]
        longest = int(np.argmax(self.lengths[steps].max(axis=1)))
        steps[[0, longest]] = steps[[longest, 0]]
        return steps

    def __iter__(self) -> Iterator[int]:
        mine = self.global_order()[:, self.rank].ravel()
        for index in mine[self.position :]:
            yield int(index)
