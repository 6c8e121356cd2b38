"""Epigone (Eq. 4, App. B.1): a low-rank MLP translating [V, P] into the denoiser's conditioning.

Applied per token: a shared down-projection (D -> rank) and SiLU, then one up-projection for the
V tokens (-> the MMDiT's ``joint_attention_dim``, its ``encoder_hidden_states``) and one for P
(-> ``pooled_projection_dim``, its ``pooled_projections``). Two layers on each path, as the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Epigone(nn.Module):
    """``forward(V (B, n, D), P (B, D)) -> (encoder_hidden_states (B, n, C), pooled_projections (B, Cp))``."""

    def __init__(self, llm_dim: int, rank: int, context_dim: int, pooled_dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(llm_dim, rank)
        self.up_context = nn.Linear(rank, context_dim)
        self.up_pooled = nn.Linear(rank, pooled_dim)

    def forward(self, V: torch.Tensor, P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning of the denoiser from the visual tokens V and the global embedding P."""
        if V.dim() != 3 or P.dim() != 2 or V.shape[0] != P.shape[0]:
            raise ValueError(f"Epigone: expected V (B, n, D) and P (B, D), got {tuple(V.shape)} and {tuple(P.shape)}")
        h = F.silu(self.down(torch.cat([V, P.unsqueeze(1)], dim=1)))  # [V; P] (B, n+1, rank)
        return self.up_context(h[:, :-1]), self.up_pooled(h[:, -1])
