"""Vision-language projectors behind one interface: the SA-Perceiver and the baselines of Tab. 8-9.

Every projector maps the vision tokens of N images, ``v_lo`` (N, l, d) and ``v_hi`` (N, M*l, d) with
``hi_mask`` (N, M*l) marking real (not padded) tiles, to a ``ProjectorOutput``:

- ``tokens``: one (n_i, D) tensor per image, the visual tokens the LLM receives;
- ``cue``: (N, n_c, D), the tokens that condition the denoiser (V for the SA-Perceiver; the
  low-res view's tokens for baselines, so the cue has one length across a batch);
- ``pooled``: (N, D), the global embedding P (the query token, or the mean of the cue).

Baselines: ``mlp2x_gelu`` (LLaVA-1.5 on the low-res view), ``hd_grid`` (LLaVA-1.5-HD: base view and
every real tile of the compressive encoding through mlp2x_gelu, tiles flattened row-major), ``anyres``
(LLaVA-NeXT exactly: its own tiling, the tile grid unpadded to the image's aspect ratio and a learned
newline token per row, see ``vlsa.model.anyres``), ``qformer`` (learnable queries cross-attend to the
tiles), ``pixel_unshuffle`` (2x2 token merge of each view, then an MLP).

``forward(v_lo, v_hi, hi_mask=None, image_sizes=None)``: ``image_sizes`` (N, 2) is each image's original
(height, width), which only ``anyres`` needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from vlsa.config import ProjectorConfig
from vlsa.model.anyres import anyres_grid, anyres_token_count, unpadded_grid
from vlsa.model.geometry import visual_tokens
from vlsa.model.perceiver import SAPerceiver


@dataclass
class ProjectorOutput(ModelOutput):
    """Visual tokens per image, the denoiser cue and the global embedding (always all three).

    A ``ModelOutput`` (a dict underneath), not a plain dataclass: DeepSpeed ZeRO-3 finds a module's
    output tensors only inside tuples, lists and dicts, and hooks them to re-gather the module's own
    parameters before its backward. Hidden in a dataclass, a projector that owns parameters directly
    (the Q-former's queries) would run its backward on released, empty parameters.
    """

    tokens: list[torch.Tensor] | None = None
    cue: torch.Tensor | None = None
    pooled: torch.Tensor | None = None


def mlp2x_gelu(d: int, D: int) -> nn.Sequential:
    """LLaVA's projector: Linear(d, D) - GELU - Linear(D, D) (keys ``0.*`` and ``2.*`` as in LLaVA)."""
    return nn.Sequential(nn.Linear(d, D), nn.GELU(), nn.Linear(D, D))


class PerceiverProjector(nn.Module):
    """The SA-Perceiver as a projector: l tokens per image, cue V, pooled P."""

    def __init__(self, cfg: ProjectorConfig, d: int, D: int, num_patches: int) -> None:
        super().__init__()
        self.cfg, self.num_patches = cfg, num_patches
        self.perceiver = SAPerceiver.from_config(cfg, d, D)

    def token_count(self, num_tiles: int) -> int:
        """Visual tokens the LLM gets for an image of ``num_tiles`` tiles."""
        return visual_tokens(self.cfg, self.num_patches, num_tiles)

    def forward(self, v_lo, v_hi, hi_mask=None, image_sizes=None) -> ProjectorOutput:
        V, P = self.perceiver(v_lo, v_hi, hi_mask)  # (N, l, D), (N, D)
        return ProjectorOutput(tokens=list(V), cue=V, pooled=P)


class MLPProjector(nn.Module):
    """LLaVA-1.5 ``mlp2x_gelu`` over the low-res view only (tiles ignored)."""

    def __init__(self, cfg: ProjectorConfig, d: int, D: int, num_patches: int) -> None:
        super().__init__()
        self.cfg, self.num_patches = cfg, num_patches
        self.mlp = mlp2x_gelu(d, D)

    def token_count(self, num_tiles: int) -> int:
        """Visual tokens the LLM gets for an image of ``num_tiles`` tiles."""
        return visual_tokens(self.cfg, self.num_patches, num_tiles)

    def forward(self, v_lo, v_hi, hi_mask=None, image_sizes=None) -> ProjectorOutput:
        x = self.mlp(v_lo)  # (N, l, D)
        return ProjectorOutput(tokens=list(x), cue=x, pooled=x.mean(dim=1))


class HDGridProjector(nn.Module):
    """LLaVA-1.5-HD: base view then every real tile, all through one mlp2x_gelu ((m+1)*l tokens)."""

    def __init__(self, cfg: ProjectorConfig, d: int, D: int, num_patches: int) -> None:
        super().__init__()
        self.cfg, self.num_patches = cfg, num_patches
        self.mlp = mlp2x_gelu(d, D)

    def token_count(self, num_tiles: int) -> int:
        """Visual tokens the LLM gets for an image of ``num_tiles`` tiles."""
        return visual_tokens(self.cfg, self.num_patches, num_tiles)

    def forward(self, v_lo, v_hi, hi_mask=None, image_sizes=None) -> ProjectorOutput:
        base, tiles = self.mlp(v_lo), self.mlp(v_hi)  # (N, l, D), (N, M*l, D)
        mask = _full_mask(v_hi) if hi_mask is None else hi_mask
        tokens = [torch.cat([base[i], tiles[i][mask[i]]]) for i in range(base.shape[0])]
        return ProjectorOutput(tokens=tokens, cue=base, pooled=base.mean(dim=1))


class AnyResProjector(nn.Module):
    """LLaVA-NeXT AnyRes: base view, then the tile-token grid unpadded to the image with a newline per row."""

    def __init__(self, cfg: ProjectorConfig, d: int, D: int, num_patches: int, *, image_size: int,
                 grids: list[list[int]]) -> None:
        super().__init__()
        self.cfg, self.num_patches, self.side = cfg, num_patches, math.isqrt(num_patches)
        self.image_size, self.grids = image_size, [tuple(g) for g in grids]
        self.mlp = mlp2x_gelu(d, D)
        self.image_newline = nn.Parameter(torch.randn(D) * D**-0.5)  # LLaVA-NeXT's init: std 1/sqrt(D)

    def tokens_for_size(self, height: int, width: int) -> int:
        """Visual tokens the LLM gets for an image of (height, width)."""
        return anyres_token_count(height, width, self.grids, self.image_size, self.image_size // self.side)

    def token_count(self, num_tiles: int) -> int:
        """Visual tokens for an image that exactly fills a grid of ``num_tiles`` tiles (the squarest one)."""
        return visual_tokens(self.cfg, self.num_patches, num_tiles)

    def forward(self, v_lo, v_hi, hi_mask=None, image_sizes=None) -> ProjectorOutput:
        if image_sizes is None:
            raise ValueError("the anyres projector needs image_sizes (N, 2): each image's original (height, width), "
                             "to cut its tiles and unpad them as LLaVA-NeXT does")
        base, tiles = self.mlp(v_lo), self.mlp(v_hi)  # (N, l, D), (N, M*l, D)
        mask = _full_mask(v_hi) if hi_mask is None else hi_mask
        tokens = [torch.cat([base[i], self._pack(tiles[i][mask[i]], *map(int, image_sizes[i]))]) for i in range(len(base))]
        return ProjectorOutput(tokens=tokens, cue=base, pooled=base.mean(dim=1))

    def _pack(self, tiles: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(m*l, D) tile tokens -> the unpadded (h, w) token grid with a newline ending each row, (h*(w+1), D)."""
        rows, cols = anyres_grid(height, width, self.grids, self.image_size)
        g, D = self.side, tiles.shape[-1]
        if tiles.shape[0] != rows * cols * g * g:
            raise ValueError(f"anyres: an image of {height}x{width} has {rows}x{cols} tiles ({rows * cols * g * g} "
                             f"tokens) but {tiles.shape[0]} tile tokens were given")
        grid = tiles.view(rows, cols, g, g, D).permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g, D)
        top, bottom, left, right = unpadded_grid(height, width, rows * g, cols * g)
        grid = grid[top:bottom, left:right]  # (h, w, D)
        newline = self.image_newline.to(grid.dtype).expand(grid.shape[0], 1, D)
        return torch.cat([grid, newline], dim=1).reshape(-1, D)


class QFormerProjector(nn.Module):
    """Q-former-style resampler: learnable queries cross-attend to the tiles, then an MLP block and Linear(d, D)."""

    def __init__(self, cfg: ProjectorConfig, d: int, D: int, num_patches: int) -> None:
        super().__init__()
        self.cfg, self.num_patches = cfg, num_patches
        n_q = visual_tokens(cfg, num_patches, 0)
        self.queries = nn.Parameter(torch.randn(n_q, d) * d**-0.5)
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, cfg.heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.proj = nn.Linear(d, D)

    def token_count(self, num_tiles: int) -> int:
        """Visual tokens the LLM gets for an image of ``num_tiles`` tiles."""
        return visual_tokens(self.cfg, self.num_patches, num_tiles)

    def forward(self, v_lo, v_hi, hi_mask=None, image_sizes=None) -> ProjectorOutput:
        q = self.norm_q(self.queries).unsqueeze(0).expand(v_hi.shape[0], -1, -1)  # (N, n_q, d)
        kv = self.norm_kv(v_hi)
        pad = None if hi_mask is None else ~hi_mask  # MultiheadAttention: True = ignore
        x = self.queries + self.attn(q, kv, kv, key_padding_mask=pad, need_weights=False)[0]
        x = self.proj(x + self.ff(self.norm_ff(x)))  # (N, n_q, D)
        return ProjectorOutput(tokens=list(x), cue=x, pooled=x.mean(dim=1))


class PixelUnshuffleProjector(nn.Module):
    """Pixel-unshuffle (2x2 neighbouring tokens concatenated channel-wise) of each view, then mlp2x_gelu."""

    def __init__(self, cfg: ProjectorConfig, d: int, D: int, num_patches: int) -> None:
        super().__init__()
        side = math.isqrt(num_patches)
        if side * side != num_patches or side % 2:
            raise ValueError(f"pixel_unshuffle needs an even square patch grid, got l={num_patches} tokens")
        self.cfg, self.num_patches, self.side = cfg, num_patches, side
        self.unshuffle = nn.PixelUnshuffle(2)
        self.mlp = mlp2x_gelu(4 * d, D)

    def token_count(self, num_tiles: int) -> int:
        """Visual tokens the LLM gets for an image of ``num_tiles`` tiles."""
        return visual_tokens(self.cfg, self.num_patches, num_tiles)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """(V, l, d) views -> (V, l/4, 4d)."""
        v, l, d = x.shape
        grid = x.transpose(1, 2).reshape(v, d, self.side, self.side)  # (V, d, s, s)
        return self.unshuffle(grid).flatten(2).transpose(1, 2)  # (V, l/4, 4d)

    def forward(self, v_lo, v_hi, hi_mask=None, image_sizes=None) -> ProjectorOutput:
        n, l, d = v_lo.shape
        base = self.mlp(self._merge(v_lo))  # (N, l/4, D)
        tiles = self.mlp(self._merge(v_hi.reshape(-1, l, d))).reshape(n, -1, base.shape[-1])  # (N, M*l/4, D)
        mask = (_full_mask(v_hi) if hi_mask is None else hi_mask)[:, ::4]  # one flag per merged token
        tokens = [torch.cat([base[i], tiles[i][mask[i]]]) for i in range(n)]
        return ProjectorOutput(tokens=tokens, cue=base, pooled=base.mean(dim=1))


def _full_mask(v_hi: torch.Tensor) -> torch.Tensor:
    return torch.ones(v_hi.shape[:2], dtype=torch.bool, device=v_hi.device)


_PROJECTORS = {
    "sa_perceiver": PerceiverProjector,
    "mlp2x_gelu": MLPProjector,
    "hd_grid": HDGridProjector,
    "anyres": AnyResProjector,
    "qformer": QFormerProjector,
    "pixel_unshuffle": PixelUnshuffleProjector,
}


def build_projector(cfg: ProjectorConfig, d: int, D: int, *, num_patches: int, image_size: int = 0,
                    grids: list[list[int]] | None = None) -> nn.Module:
    """The projector named by ``cfg.type``, mapping vision width d to LLM width D (l = ``num_patches``).

    ``image_size`` (the vision input side) and ``grids`` (``model.encoding.anyres_grids``) are for ``anyres``.
    """
    if cfg.type == "anyres":
        if not image_size or not grids:
            raise ValueError("the anyres projector needs the vision input side and model.encoding.anyres_grids")
        return AnyResProjector(cfg, d, D, num_patches, image_size=image_size, grids=grids)
    return _PROJECTORS[cfg.type](cfg, d, D, num_patches)
