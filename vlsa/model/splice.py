"""Placing visual tokens at the ``<image>`` placeholders of a tokenized batch.

Each image is marked in ``input_ids`` by a run of the tokenizer's real ``<image>`` token: a single
token (the model expands it to the image's n visual tokens) or exactly n tokens (replaced one for
one, as pre-expanded prompts do). Runs are matched to images in order; ``image_counts`` says how
many images each sample has. Any disagreement is an error naming the sample and both numbers.
Padding (``attention_mask == 0``) is dropped and the spliced sequences are re-padded on one side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlsa.tokens import IGNORE_INDEX


@dataclass
class Spliced:
    """The LLM inputs after splicing, and where each image's tokens landed."""

    inputs_embeds: torch.Tensor  # (B, T, D)
    attention_mask: torch.Tensor  # (B, T) long
    labels: torch.Tensor | None  # (B, T) long, IGNORE_INDEX at image and pad positions
    ssft_mask: torch.Tensor | None  # (B, T) bool
    image_index: torch.Tensor  # (B, T) long: global image index at image positions, -1 elsewhere
    spans: list[tuple[int, int, int]]  # per image, in order: (sample, start, length)


def image_runs(ids: torch.Tensor, image_token_id: int) -> list[tuple[int, int]]:
    """(start, length) of each run of consecutive ``image_token_id`` in a 1-D id tensor."""
    hits = (ids == image_token_id).nonzero().flatten().tolist()
    runs: list[list[int]] = []
    for pos in hits:
        if runs and pos == runs[-1][0] + runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([pos, 1])
    return [(start, length) for start, length in runs]


def check_image_counts(input_ids, attention_mask, image_counts, num_images: int, image_token_id: int) -> None:
    """Placeholders per sample must equal ``image_counts`` and the counts must sum to the images given."""
    if image_counts.shape != (input_ids.shape[0],):
        raise ValueError(f"image_counts must have shape ({input_ids.shape[0]},), got {tuple(image_counts.shape)}")
    total = int(image_counts.sum())
    if total != num_images:
        raise ValueError(f"image_counts sums to {total} but the batch has {num_images} images (pixel_lo)")
    for b in range(input_ids.shape[0]):
        found = len(image_runs(input_ids[b][attention_mask[b].bool()], image_token_id))
        if found != int(image_counts[b]):
            raise ValueError(
                f"sample {b}: {found} <image> placeholder(s) in input_ids but image_counts[{b}] = {int(image_counts[b])}"
            )


def _sample_pieces(ids, emb, lab, ssft, visual, first_image: int, image_token_id: int, b: int):
    """Embeddings, labels, ssft flags and image indices of one sample after splicing."""
    pieces: dict[str, list[torch.Tensor]] = {"emb": [], "lab": [], "ssft": [], "idx": []}
    spans, cursor = [], 0

    def add(*values: torch.Tensor) -> None:
        for key, value in zip(pieces, values):
            pieces[key].append(value)

    for k, (start, length) in enumerate(image_runs(ids, image_token_id)):
        add(emb[cursor:start], lab[cursor:start], ssft[cursor:start], torch.full_like(ids[cursor:start], -1))
        tokens = visual[first_image + k]  # (n, D)
        if length not in (1, tokens.shape[0]):
            raise ValueError(
                f"sample {b}, image {k}: {length} <image> tokens in input_ids but the projector gives "
                f"{tokens.shape[0]} visual tokens (use 1 placeholder or exactly {tokens.shape[0]})"
            )
        n = tokens.shape[0]
        spans.append((b, sum(p.shape[0] for p in pieces["emb"]), n))
        add(tokens.to(emb.dtype), lab.new_full((n,), IGNORE_INDEX), ssft.new_zeros(n), ids.new_full((n,), first_image + k))
        cursor = start + length
    add(emb[cursor:], lab[cursor:], ssft[cursor:], torch.full_like(ids[cursor:], -1))
    return {key: torch.cat(val) for key, val in pieces.items()}, spans


def splice_visual_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    embed,
    visual: list[torch.Tensor],
    image_token_id: int,
    *,
    labels: torch.Tensor | None = None,
    ssft_mask: torch.Tensor | None = None,
    pad_left: bool = False,
    max_length: int = 0,
) -> Spliced:
    """LLM inputs with ``visual[i]`` (n_i, D) at the i-th image placeholder of the batch (in order)."""
    labels_in = labels if labels is not None else torch.full_like(input_ids, IGNORE_INDEX)
    ssft_in = ssft_mask if ssft_mask is not None else torch.zeros_like(input_ids, dtype=torch.bool)
    samples, spans, first = [], [], 0
    for b in range(input_ids.shape[0]):
        real = attention_mask[b].bool()
        ids = input_ids[b][real]
        parts, sample_spans = _sample_pieces(
            ids, embed(ids), labels_in[b][real], ssft_in[b][real].bool(), visual, first, image_token_id, b
        )
        if max_length and parts["emb"].shape[0] > max_length:
            raise ValueError(f"sample {b}: {parts['emb'].shape[0]} tokens with visual tokens > llm.max_length {max_length}")
        first += len(sample_spans)
        samples.append(parts)
        spans.extend(sample_spans)
    return _pad(samples, spans, pad_left, labels is not None, ssft_mask is not None)


def _pad(samples: list[dict], spans, pad_left: bool, has_labels: bool, has_ssft: bool) -> Spliced:
    """Stack per-sample tensors, padding to the longest (spans shift by the left padding)."""
    T = max(s["emb"].shape[0] for s in samples)
    fills = {"emb": 0.0, "lab": IGNORE_INDEX, "ssft": False, "idx": -1, "mask": 0}
    out: dict[str, list[torch.Tensor]] = {key: [] for key in fills}
    shifts = []
    for s in samples:
        n = s["emb"].shape[0]
        s = dict(s, mask=torch.ones(n, dtype=torch.long, device=s["emb"].device))
        shifts.append(T - n if pad_left else 0)
        for key, fill in fills.items():
            pad = s[key].new_full((T - n, *s[key].shape[1:]), fill)
            out[key].append(torch.cat([pad, s[key]] if pad_left else [s[key], pad]))
    stacked = {key: torch.stack(val) for key, val in out.items()}
    return Spliced(
        inputs_embeds=stacked["emb"],
        attention_mask=stacked["mask"],
        labels=stacked["lab"] if has_labels else None,
        ssft_mask=stacked["ssft"] if has_ssft else None,
        image_index=stacked["idx"],
        spans=[(b, start + shifts[b], n) for b, start, n in spans],
    )
