"""VDEP objective (paper 003, Eq. 6 and 10): L_i = ||X_I - X_I^h||^2 at image positions.

X_I are the projector outputs fed to the LLM and X_I^h the LLM's last hidden states at the image
positions. Autoregressive like text: the hidden state at image position i regresses the projector
output at position i+1 of the same image (``autoregressive=False``: the same position). The target
is detached, as a regression target, so the projector is not pulled towards the LLM's states. The
loss is the squared L2 norm per token, averaged over the regressed tokens; it is weighted by alpha
in the total loss. The half/half batch split of pre-training is chosen by the caller (``sample_mask``).
"""

from __future__ import annotations

import torch


def vdep_loss(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    image_index: torch.Tensor,
    *,
    autoregressive: bool = True,
    sample_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """L_vdep over samples in ``sample_mask`` (None: all); None when no pair of image positions exists.

    hidden (B, T, D): LLM last hidden states; targets (B, T, D): the input embeddings (projector
    outputs at image positions); image_index (B, T) long: which image a position belongs to, -1 for text.
    """
    if hidden.shape != targets.shape or hidden.shape[:2] != image_index.shape:
        raise ValueError(
            f"vdep: hidden {tuple(hidden.shape)}, targets {tuple(targets.shape)} and image_index "
            f"{tuple(image_index.shape)} must agree"
        )
    if autoregressive:
        pred, tgt = hidden[:, :-1], targets[:, 1:]
        valid = (image_index[:, :-1] >= 0) & (image_index[:, :-1] == image_index[:, 1:])  # (B, T-1)
    else:
        pred, tgt, valid = hidden, targets, image_index >= 0
    if sample_mask is not None:
        valid = valid & sample_mask[:, None]
    if not valid.any():
        return None
    diff = pred[valid].float() - tgt[valid].detach().float()  # (n, D)
    return (diff**2).sum(dim=-1).mean()
