"""Padding collate: assembled samples -> the batch ``VLSAModel.forward(**batch)`` consumes.

Tensor keys: ``input_ids`` (B, T) long, right-padded with the pad id; ``attention_mask`` (B, T) long;
``labels`` (B, T) long, -100 at padding; ``ssft_mask`` (B, T) bool; ``image_counts`` (B,) long;
``pixel_lo`` (N, 3, s, s); ``pixel_hi`` (N, M, 3, s, s) with ``tile_mask`` (N, M) bool (M: most tiles
in the batch, padded tiles zero and False); ``image_sizes`` (N, 2) each image's original (height, width);
and exactly one of ``recon_pixels`` (N, 3, S, S) or
``recon_latent`` (N, C, s', s'); ``vdep_mode`` (B,) bool when the samples come from VDEP's doubled
data. Non-tensor keys: ``ids``, ``ssft`` (kinds per sample), ``ssft_coverage`` (fraction of each drawn
target covered, per sample) and
``skipped`` ((id, reason) of records replaced while loading), which the model ignores.
"""

from __future__ import annotations

import torch

from vlsa.tokens import IGNORE_INDEX


class Collator:
    """Collate function for a ``DataLoader``; ``pad_id`` is the tokenizer's pad token id."""

    def __init__(self, pad_id: int):
        if pad_id is None:
            raise ValueError("the tokenizer has no pad token id")
        self.pad_id = int(pad_id)

    def __call__(self, samples: list[dict]) -> dict:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        batch = self.text(samples)
        batch.update(self.images(samples))
        if any("vdep_mode" in s for s in samples):  # VDEP's doubled pre-training data (vlsa.data.doubling)
            batch["vdep_mode"] = torch.tensor([bool(s.get("vdep_mode", False)) for s in samples])  # (B,)
        batch["ids"] = [s["id"] for s in samples]
        batch["ssft"] = [list(s.get("ssft", [])) for s in samples]
        batch["ssft_coverage"] = [dict(s.get("ssft_coverage", {})) for s in samples]
        batch["skipped"] = [tuple(pair) for s in samples for pair in s.get("skipped", [])]
        return batch

    def text(self, samples: list[dict]) -> dict:
        """Right-padded ids, attention mask, labels and SSFT mask."""
        longest = max(len(s["input_ids"]) for s in samples)
        b = len(samples)
        input_ids = torch.full((b, longest), self.pad_id, dtype=torch.long)  # (B, T)
        attention = torch.zeros(b, longest, dtype=torch.long)  # (B, T)
        labels = torch.full((b, longest), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        ssft = torch.zeros(b, longest, dtype=torch.bool)  # (B, T)
        for i, s in enumerate(samples):
            t = len(s["input_ids"])
            input_ids[i, :t], attention[i, :t] = s["input_ids"], 1
            labels[i, :t], ssft[i, :t] = s["labels"], s["ssft_mask"]
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "ssft_mask": ssft}

    def images(self, samples: list[dict]) -> dict:
        """Images of all samples in order: X_Lo, tiles padded to the batch's most, recon target."""
        recon_keys = {key for s in samples for key in ("recon_pixels", "recon_latent") if key in s}
        if len(recon_keys) != 1:
            raise ValueError(f"samples must all carry one reconstruction target, found {sorted(recon_keys)}")
        (recon_key,) = recon_keys
        pixel_lo = torch.cat([s["pixel_lo"] for s in samples])  # (N, 3, s, s)
        tiles = [hi for s in samples for hi in s["pixel_hi"]]
        most = max((hi.shape[0] for hi in tiles), default=1)
        side = pixel_lo.shape[-1]
        pixel_hi = torch.zeros(len(tiles), most, 3, side, side, dtype=pixel_lo.dtype)  # (N, M, 3, s, s)
        tile_mask = torch.zeros(len(tiles), most, dtype=torch.bool)  # (N, M)
        for n, hi in enumerate(tiles):
            pixel_hi[n, : hi.shape[0]], tile_mask[n, : hi.shape[0]] = hi, True
        return {
            "image_counts": torch.tensor([s["pixel_lo"].shape[0] for s in samples], dtype=torch.long),  # (B,)
            "pixel_lo": pixel_lo,
            "pixel_hi": pixel_hi,
            "tile_mask": tile_mask,
            recon_key: torch.cat([s[recon_key] for s in samples]),
        } | _image_sizes(samples)


def _image_sizes(samples: list[dict]) -> dict:
    """``image_sizes`` (N, 2) when every sample carries its images' original (height, width)."""
    if not all("image_sizes" in s for s in samples):
        return {}
    return {"image_sizes": torch.cat([s["image_sizes"] for s in samples]).view(-1, 2)}
