"""SA-Perceiver (Sec. 3.1, Eq. 1-2, App. B.2/B.3): gathers high-res tile tokens into the low-res view.

Works in the vision width d and ends in the LLM width D. With V'_Lo = [V_Lo; q]:

    cross-attention (Eq. 1):  Q = w_q V'_Lo,  K = V = w_kv V_Hi
                              V'_Lo <- SiLU(w_o1 softmax(Q K^T / sqrt(d_h)) V) + V'_Lo
    self-attention  (Eq. 2):  Q = V'_Lo,  K = w_k V'_Lo,  V = V'_Lo
                              V'_Lo <- w_o2 softmax(Q K^T / sqrt(d_h)) V            (d -> D)

Both attentions are multi-head (d_h = d / heads). The first l tokens are V (to the LLM), the last is
P (the global embedding for the denoiser). Ablations (Tab. 8): ``self_attention=False`` (ex1) drops
Eq. 2 and keeps w_o2 as a plain projection; ``full_projections=True`` (ex2) adds separate value and
query projections (w_v1, w_q2, w_v2); ``global_embedding="pool"`` (ex3) drops q and takes P as the
mean of V. ``key_init="identity"`` starts w_k as the identity instead of at random (the tiny preset:
with a small random vision tower a random w_k makes Eq. 2 average all tokens alike, so the LLM gets
the image's mean and no layout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)  # (B, h, T, d_h)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)  # (B, T, d)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, key_mask: torch.Tensor | None = None):
    """Multi-head softmax(Q K^T / sqrt(d_h)) V over (B, T, d) inputs; ``key_mask`` (B, S) True = attend."""
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, S)
    out = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads), attn_mask=mask)
    return _merge(out)


class IdentityLinear(nn.Linear):
    """A linear layer that starts as the identity (square only). Set in ``reset_parameters``, which
    ``nn.Linear`` calls while it is built: under ZeRO-3's ``zero.Init`` the values exist before they are
    partitioned."""

    def reset_parameters(self) -> None:
        nn.init.eye_(self.weight)
        nn.init.zeros_(self.bias)


class SAPerceiver(nn.Module):
    """The SA-Perceiver: ``forward(v_lo, v_hi, hi_mask=None) -> (V (B, l, D), P (B, D))``."""

    def __init__(
        self,
        vision_dim: int,
        llm_dim: int,
        heads: int = 16,
        self_attention: bool = True,
        full_projections: bool = False,
        global_embedding: str = "query",
        key_init: str = "random",
    ) -> None:
        super().__init__()
        if vision_dim % heads:
            raise ValueError(f"SA-Perceiver: vision width {vision_dim} is not divisible by heads {heads}")
        if global_embedding not in ("query", "pool"):
            raise ValueError(f"SA-Perceiver: global_embedding must be 'query' or 'pool', got {global_embedding!r}")
        d = vision_dim
        self.heads, self.self_attention, self.full_projections = heads, self_attention, full_projections
        self.global_embedding = global_embedding
        if global_embedding == "query":
            self.query = nn.Parameter(torch.randn(1, d) * d**-0.5)  # q (1 x d)
        self.w_q, self.w_kv, self.w_o1 = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        if self_attention:
            self.w_k = IdentityLinear(d, d) if key_init == "identity" else nn.Linear(d, d)
        self.w_o2 = nn.Linear(d, llm_dim)
        if full_projections:  # ex2: the projections Eq. 1-2 leave out
            self.w_v1 = nn.Linear(d, d)
            if self_attention:
                self.w_q2, self.w_v2 = nn.Linear(d, d), nn.Linear(d, d)

    @classmethod
    def from_config(cls, cfg, vision_dim: int, llm_dim: int) -> "SAPerceiver":
        """Build from a ``ProjectorConfig``."""
        return cls(vision_dim, llm_dim, cfg.heads, cfg.self_attention, cfg.full_projections, cfg.global_embedding,
                   cfg.key_init)

    def forward(
        self, v_lo: torch.Tensor, v_hi: torch.Tensor, hi_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(V (B, l, D), P (B, D)) from v_lo (B, l, d), v_hi (B, M*l, d), hi_mask (B, M*l) True = real tile."""
        _check_inputs(v_lo, v_hi, hi_mask, self.w_q.in_features)
        b, l, _ = v_lo.shape
        x = v_lo
        if self.global_embedding == "query":
            x = torch.cat([v_lo, self.query.expand(b, 1, -1).to(v_lo.dtype)], dim=1)  # V'_Lo (B, l+1, d)
        x = self._cross(x, v_hi, hi_mask)
        x = self._self(x) if self.self_attention else self.w_o2(x)  # (B, l(+1), D)
        if self.global_embedding == "query":
            return x[:, :l], x[:, l]
        return x, x.mean(dim=1)

    def _cross(self, x: torch.Tensor, v_hi: torch.Tensor, hi_mask: torch.Tensor | None) -> torch.Tensor:
        """Eq. 1: x <- SiLU(w_o1 attn(w_q x, w_kv V_Hi, w_kv V_Hi)) + x."""
        keys = self.w_kv(v_hi)  # (B, M*l, d)
        values = self.w_v1(v_hi) if self.full_projections else keys
        out = attend(self.w_q(x), keys, values, self.heads, hi_mask)
        return F.silu(self.w_o1(out)) + x

    def _self(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 2: x <- w_o2 attn(x, w_k x, x)."""
        q = self.w_q2(x) if self.full_projections else x
        v = self.w_v2(x) if self.full_projections else x
        return self.w_o2(attend(q, self.w_k(x), v, self.heads))


def _check_inputs(v_lo: torch.Tensor, v_hi: torch.Tensor, hi_mask: torch.Tensor | None, d: int) -> None:
    if v_lo.dim() != 3 or v_hi.dim() != 3:
        raise ValueError(f"SA-Perceiver: v_lo and v_hi must be (B, T, d), got {tuple(v_lo.shape)} and {tuple(v_hi.shape)}")
    if v_lo.shape[-1] != d or v_hi.shape[-1] != d:
        raise ValueError(f"SA-Perceiver: width {d} expected, got v_lo {v_lo.shape[-1]} and v_hi {v_hi.shape[-1]}")
    if v_lo.shape[0] != v_hi.shape[0]:
        raise ValueError(f"SA-Perceiver: batch of v_lo ({v_lo.shape[0]}) and v_hi ({v_hi.shape[0]}) differ")
    if v_hi.shape[1] % v_lo.shape[1]:
        raise ValueError(f"SA-Perceiver: v_hi length {v_hi.shape[1]} is not a multiple of l={v_lo.shape[1]}")
    if hi_mask is not None and tuple(hi_mask.shape) != tuple(v_hi.shape[:2]):
        raise ValueError(f"SA-Perceiver: hi_mask shape {tuple(hi_mask.shape)} does not match v_hi {tuple(v_hi.shape[:2])}")
