"""The language-modeling loss L, from the logits or, chunked, from the LLM's last hidden states.

``lm_losses`` scores (B, T, V) logits the LLM has already made. ``chunked_lm_losses`` never makes
them: it applies the LM head to the supervised positions only, in a fixed number of pieces, each one
recomputed in the backward pass (activation checkpointing), so at most one piece's logits (n / chunks,
V) exist at any time, in the model dtype and in fp32. At LLaMA-3's 128K vocabulary a micro-batch of 16
sequences of 2,048 tokens has 16 GiB of fp32 logits; the chunked loss holds a small fraction of that.
Both return (L over every supervised position, L over SFT positions, L over SSFT positions), the
parts None when they have no position; the same numbers up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vlsa.tokens import IGNORE_INDEX


def lm_losses(logits, labels, ssft_mask):
    """(L, L_sft, L_ssft) from logits (B, T, V), labels (B, T) and ssft_mask (B, T); all None without labels."""
    if labels is None:
        return None, None, None
    per_token = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX,
                                reduction="none")  # (B, T-1)
    valid = labels[:, 1:] != IGNORE_INDEX
    return _reduce(per_token[valid], _ssft(ssft_mask, valid), empty=logits)


def chunked_lm_losses(hidden, head, labels, ssft_mask, chunks: int):
    """``lm_losses(head(hidden), labels, ssft_mask)`` without the (B, T, V) logits.

    hidden (B, T, D): the LLM's final (normed) hidden states; ``head``: its output embedding module
    (a plain linear head: models that scale or soft-cap their logits need the plain loss). The head
    runs exactly ``chunks`` times in the forward pass and again in the backward pass, some pieces
    possibly empty, so under ZeRO-3 every rank gathers its weight equally often whatever its
    supervised-token count.
    """
    if labels is None:
        return None, None, None
    valid = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    states, targets = hidden[:, :-1][valid], labels[:, 1:][valid]  # (n, D), (n,)
    pieces = [checkpoint(_token_losses, head, h, t, use_reentrant=False)
              for h, t in zip(torch.tensor_split(states, chunks), torch.tensor_split(targets, chunks))]
    per_token = torch.cat(pieces)  # (n,)
    return _reduce(per_token, _ssft(ssft_mask, valid), empty=per_token)


def _token_losses(head, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(states).float(), targets, reduction="none")  # (n_piece,)


def _ssft(ssft_mask, valid: torch.Tensor) -> torch.Tensor:
    """SSFT flags of the supervised positions, in their order."""
    return (ssft_mask[:, 1:] & valid)[valid] if ssft_mask is not None else valid.new_zeros(int(valid.sum()))


def _reduce(per_token: torch.Tensor, ssft: torch.Tensor, empty: torch.Tensor):
    """Means over all, SFT and SSFT positions; with no position, L is 0 times ``empty`` (the graph is kept)."""
    loss = per_token.mean() if per_token.numel() else empty.sum() * 0.0
    sft = per_token[~ssft].mean() if (~ssft).any() else None
    return loss, sft, per_token[ssft].mean() if ssft.any() else None
