"""ROSS's reconstruction head (paper 004, Sec. 4.2, Fig. 4, App. A-B), the peer method as published.

A small randomly initialised denoiser of Transformer-encoder blocks recovers the clean latent tokens
z_0 of a frozen KL VAE (KL-16 in ROSS) from noisy tokens z_t, conditioned token by token on the LLM's
outputs x at the image positions. Each block adds three projections — of the condition, of z_t and of
the timestep embedding — to its input and runs a standard self-attention encoder block (Fig. 4b).
The objective is DDPM's epsilon prediction (Eq. 4 / Eq. 8): t ~ U{0..T-1},
z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps, L_rec = mean ||eps_theta(z_t; x, t) - eps||^2.

Unlike VLSA's head there is no bottleneck (no Epigone) between the LLM and the denoiser, and the
noise schedule is diffusers' ``DDPMScheduler``. The condition has one token per latent token: a cue
of another length that is a square grid (the base view's l tokens) is resized bilinearly to the
latent grid, so ROSS's 729 SigLIP tokens / 27x27 KL-16 latents pair one to one, and a 576-token
CLIP-336 base view pairs with a 24x24 latent (384 px).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlsa.config import RossDenoiserConfig
from vlsa.model.reconstruction import LatentTargetHead, decode_latent


class RossBlock(nn.Module):
    """One denoiser block: input + W_x x + W_z z_t + W_t e(t), then a pre-norm self-attention encoder block."""

    def __init__(self, width: int, heads: int, cond_dim: int, latent_channels: int) -> None:
        super().__init__()
        self.cond_proj = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(latent_channels, width)
        self.time_proj = nn.Linear(width, width)
        self.encoder = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0,
                                                  activation="gelu", batch_first=True, norm_first=True)

    def forward(self, h, cond, z_t, t_emb) -> torch.Tensor:
        """h (N, S, W), cond (N, S, D), z_t (N, S, C), t_emb (N, W) -> (N, S, W)."""
        h = h + self.cond_proj(cond) + self.input_proj(z_t) + self.time_proj(t_emb)[:, None]
        return self.encoder(h)


class RossDenoiser(nn.Module):
    """eps_theta(z_t; x, t) over latent tokens: (N, S, C) noisy tokens -> (N, S, C) predicted noise."""

    def __init__(self, cfg: RossDenoiserConfig, cond_dim: int, latent_channels: int) -> None:
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        self.time_features = Timesteps(cfg.width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(cfg.width, cfg.width)
        self.blocks = nn.ModuleList(RossBlock(cfg.width, cfg.heads, cond_dim, latent_channels) for _ in range(cfg.layers))
        self.norm_out = nn.LayerNorm(cfg.width)
        self.proj_out = nn.Linear(cfg.width, latent_channels)
        self.gradient_checkpointing = False

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block's activations in the backward pass."""
        self.gradient_checkpointing = True

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    def forward(self, z_t: torch.Tensor, cond: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        dtype = self.dtype
        z_t, cond = z_t.to(dtype), cond.to(dtype)
        t_emb = self.time_embed(self.time_features(timesteps).to(dtype))  # (N, W)
        h = z_t.new_zeros(*z_t.shape[:2], self.proj_out.in_features)  # (N, S, W)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, cond, z_t, t_emb, use_reentrant=False)
            else:
                h = block(h, cond, z_t, t_emb)
        return self.proj_out(self.norm_out(h))


class RossHead(LatentTargetHead):
    """ROSS's L_rec: ``forward(cue, pooled, latent=.. | pixels=..) -> scalar`` (``pooled`` is unused)."""

    def __init__(self, cfg: RossDenoiserConfig, vae, *, cond_dim: int, image_size: int, sample_steps: int = 50) -> None:
        super().__init__(vae, image_size=image_size)
        from diffusers import DDPMScheduler

        self.denoiser = RossDenoiser(cfg, cond_dim, self.latent_channels)
        self.scheduler = DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule=cfg.beta_schedule,
                                       prediction_type="epsilon")
        self.sample_steps = sample_steps

    def trainable_parts(self) -> dict[str, nn.Module]:
        """Only the denoiser: ROSS has no Epigone."""
        return {"denoiser": self.denoiser}

    def forward(self, cue: torch.Tensor, pooled: torch.Tensor | None = None, *, latent: torch.Tensor | None = None,
                pixels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The DDPM epsilon loss after noising the clean latent tokens to a uniformly drawn t."""
        z0 = self.target(latent, pixels).float()  # (N, C, s, s)
        if z0.shape[0] != cue.shape[0]:
            raise ValueError(f"reconstruction: {cue.shape[0]} visual cues but {z0.shape[0]} targets")
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (z0.shape[0],), generator=generator,
                          device=z0.device if generator is None else "cpu").to(z0.device)
        eps = torch.randn(z0.shape, generator=generator, device=z0.device if generator is None else "cpu").to(z0.device)
        z_t = self.scheduler.add_noise(z0, eps, t)
        eps_hat = self.denoiser(_tokens(z_t), align_condition(cue, self.latent_size), t)  # (N, S, C)
        return F.mse_loss(eps_hat.float(), _tokens(eps))

    @torch.no_grad()
    def sample(self, cue: torch.Tensor, pooled: torch.Tensor | None = None, steps: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstructions (N, 3, S, S) in [-1, 1] by DDPM ancestral sampling from noise (for grids)."""
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(self.scheduler.config)  # sampling state is per call
        scheduler.set_timesteps(steps or self.sample_steps, device=cue.device)
        shape = (cue.shape[0], self.latent_channels, self.latent_size, self.latent_size)
        z = torch.randn(shape, generator=generator, device="cpu" if generator is not None else cue.device).to(cue.device)
        cond = align_condition(cue, self.latent_size)
        for t in scheduler.timesteps:
            eps_hat = self.denoiser(_tokens(z), cond, t.expand(shape[0]).to(cue.device)).float()
            z = scheduler.step(_grid(eps_hat, self.latent_size), t, z, generator=generator).prev_sample
        return decode_latent(self.vae, z)


def align_condition(cue: torch.Tensor, side: int) -> torch.Tensor:
    """The cue (N, n, D) as one token per latent token (N, side*side, D); a square grid is resized bilinearly."""
    n, tokens = cue.shape[1], side * side
    if n == tokens:
        return cue
    grid = math.isqrt(n)
    if grid * grid != n:
        raise ValueError(f"ROSS: the cue has {n} tokens, neither the latent's {tokens} nor a square grid to resize")
    x = cue.transpose(1, 2).reshape(cue.shape[0], cue.shape[2], grid, grid).float()  # (N, D, g, g)
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    return x.flatten(2).transpose(1, 2).to(cue.dtype)


def _tokens(latent: torch.Tensor) -> torch.Tensor:
    """(N, C, s, s) -> (N, s*s, C)."""
    return latent.flatten(2).transpose(1, 2)


def _grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """(N, s*s, C) -> (N, C, s, s)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
