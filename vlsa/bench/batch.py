"""Synthetic batches in the collate layout (the batch contract of ``VLSAModel.forward``).

Benchmarks time the model, not the data path, so pixels and latents are seeded noise and text is
random ordinary token ids; shapes are exactly those a real batch of the same workload has: each
sample is ``<image>`` followed by ``text_tokens`` supervised text tokens, one image of m full tiles.
"""

from __future__ import annotations

import torch

from vlsa.bench.flops import Workload
from vlsa.model.anyres import squarest_grid
from vlsa.tokens import IGNORE_INDEX


def text_ids(tokenizer, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) random ids of ordinary (non-special) tokens."""
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(tokenizer.vocab_size) if i not in special])
    return ordinary[torch.randint(len(ordinary), (n,), generator=generator)]


def synthetic_batch(model, work: Workload, *, device: torch.device | str = "cpu", seed: int = 0,
                    recon: bool = True) -> dict[str, torch.Tensor]:
    """A collated batch of ``work`` for ``model`` (``recon_latent`` added when the model reconstructs)."""
    g = torch.Generator().manual_seed(seed)
    B, m, s = work.batch, work.tiles, model.image_size
    image = torch.tensor([model.image_token_id])
    rows = [torch.cat([image, text_ids(model.tokenizer, work.text_tokens, g)]) for _ in range(B)]
    input_ids = torch.stack(rows)  # (B, 1 + t)
    labels = input_ids.clone()
    labels[:, 0] = IGNORE_INDEX
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "ssft_mask": torch.zeros_like(input_ids, dtype=torch.bool),
        "image_counts": torch.ones(B, dtype=torch.long),
        "pixel_lo": torch.randn(B, 3, s, s, generator=g),
        "pixel_hi": torch.randn(B, m, 3, s, s, generator=g),
        "tile_mask": torch.ones(B, m, dtype=torch.bool),
    }
    if model.config.projector.type == "anyres":  # images that fill the squarest grid of m tiles
        rows, cols = squarest_grid(m)
        batch["image_sizes"] = torch.tensor([[rows * s, cols * s]] * B, dtype=torch.long)  # (B, 2)
    head = model.recon_head
    if recon and head is not None:
        batch["recon_latent"] = torch.randn(B, head.latent_channels, head.latent_size, head.latent_size, generator=g)
    return {k: v.to(device) for k, v in batch.items()}
