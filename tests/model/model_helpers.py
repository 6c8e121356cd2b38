"""Helpers shared by the model tests: the tiny config, synthetic images and collated batches."""

from __future__ import annotations

import torch
from PIL import Image

import vlsa
from vlsa.model.encoding import recon_pixels


def tiny_config(cache_dir: str, *overrides: str):
    """The tiny preset with its components cached under ``cache_dir``."""
    return vlsa.load_config("tiny", [f"model.cache_dir={cache_dir}", *overrides])


def solid(width: int, height: int, rgb=(200, 30, 30)) -> Image.Image:
    """A two-colour RGB test image (left half ``rgb``, right half its complement)."""
    image = Image.new("RGB", (width, height), rgb)
    image.paste(Image.new("RGB", (width // 2 or 1, height), tuple(255 - c for c in rgb)), (0, 0))
    return image


def make_batch(model, images: list[Image.Image], texts: list[str], image_counts: list[int] | None = None) -> dict:
    """A collated batch per the batch contract: texts carry ``<image>`` placeholders, answers are supervised."""
    encoder = model.encoder()
    views = [encoder(im) for im in images]
    m = max(hi.shape[0] for _, hi in views)
    side = model.image_size
    pixel_hi = torch.zeros(len(images), m, 3, side, side)
    tile_mask = torch.zeros(len(images), m, dtype=torch.bool)
    for i, (_, hi) in enumerate(views):
        pixel_hi[i, : hi.shape[0]] = hi
        tile_mask[i, : hi.shape[0]] = True
    tok = model.tokenizer(texts, padding=True, return_tensors="pt")
    labels = tok.input_ids.masked_fill(tok.attention_mask == 0, -100)
    labels = labels.masked_fill(labels == model.image_token_id, -100)
    counts = image_counts if image_counts is not None else [t.count("<image>") for t in texts]
    return {
        "input_ids": tok.input_ids,
        "attention_mask": tok.attention_mask,
        "labels": labels,
        "ssft_mask": torch.zeros_like(labels, dtype=torch.bool),
        "image_counts": torch.tensor(counts, dtype=torch.long),
        "pixel_lo": torch.stack([lo for lo, _ in views]),
        "pixel_hi": pixel_hi,
        "tile_mask": tile_mask,
        "image_sizes": torch.tensor([[im.height, im.width] for im in images], dtype=torch.long),
        "recon_pixels": torch.stack([recon_pixels(im, model.config.recon.image_size, side) for im in images]),
        "ids": [f"sample-{i}" for i in range(len(texts))],
    }
