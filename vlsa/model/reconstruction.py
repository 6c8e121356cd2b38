"""Reconstructive training with an LDM (Eq. 3-4): Epigone + SD3 MMDiT denoiser + frozen VAE.

``LatentTargetHead`` holds what every head shares (the frozen VAE and the clean latent target); ROSS's
own head (``vlsa.model.ross``) builds on it too.

Rectified flow as in SD3: t ~ logit-normal, z_t = (1 - t) z + t eps, the MMDiT predicts the velocity
v = eps - z, so one denoising step gives z_theta = z_t - t v_theta and L_rec = mean ||z - z_theta||^2.
The target z is the VAE latent shifted and scaled by the VAE's own ``shift_factor`` and
``scaling_factor`` (as the SD3 pipeline does); it is computed here from pixels in [-1, 1] or taken
ready-made from the labeling job's cache. ``sample()`` integrates the flow with Euler steps from
pure noise and decodes the result, for reconstruction grids (Fig. 4 of the paper).

The VAE is a fixed codec, not a trained part: it is held outside the module tree, so it is in no
``state_dict`` or checkpoint (it always comes from ``model.recon.vae``), no optimizer sees it, and
ZeRO-3 neither partitions it nor re-gathers it after every optimizer step. It still moves and casts
with the head (``.to``, ``.bfloat16``).
"""

from __future__ import annotations

import torch
from torch import nn

from vlsa.model.epigone import Epigone

TIMESTEP_SCALE = 1000.0  # SD3 feeds the MMDiT t * num_train_timesteps


def vae_downsampling(vae) -> int:
    """Spatial down-sampling factor of an ``AutoencoderKL`` (8 for SD3)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_latent(vae, pixels: torch.Tensor) -> torch.Tensor:
    """VAE latent (N, C, s, s) of ``pixels`` (N, 3, S, S) in [-1, 1], shifted and scaled (the posterior mode)."""
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"recon_pixels must be (N, 3, S, S), got shape {tuple(pixels.shape)}")
    latent = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()
    shift = vae.config.shift_factor or 0.0
    return (latent - shift) * vae.config.scaling_factor


@torch.no_grad()
def decode_latent(vae, latent: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, S, S) in [-1, 1] from shifted and scaled latents."""
    shift = vae.config.shift_factor or 0.0
    images = vae.decode(latent.to(vae.dtype) / vae.config.scaling_factor + shift).sample
    return images.clamp(-1.0, 1.0)


class LatentTargetHead(nn.Module):
    """What every reconstruction head shares: the frozen VAE codec and the clean latent target z.

    Subclasses define ``forward(cue, pooled, latent=.. | pixels=..) -> L_rec``, ``sample(cue, pooled)``
    and ``trainable_parts()`` (their modules by stage name, for per-stage freezing and learning rates).
    """

    def __init__(self, vae, *, image_size: int) -> None:
        super().__init__()
        object.__setattr__(self, "vae", vae)  # a plain attribute, not a submodule (see the module doc)
        self.vae.requires_grad_(False)
        self.latent_channels = vae.config.latent_channels
        self.latent_size = image_size // vae_downsampling(vae)
        self.image_size = image_size

    def _apply(self, fn, recurse: bool = True) -> "LatentTargetHead":
        """Device moves and dtype casts reach the VAE too."""
        super()._apply(fn, recurse)
        self.vae._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> "LatentTargetHead":
        """Train mode for the trained parts; the frozen VAE always stays in eval mode."""
        super().train(mode)
        self.vae.eval()
        return self

    def target(self, latent: torch.Tensor | None = None, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """The clean latent z: the cached ``latent`` or the VAE encoding of ``pixels``."""
        if (latent is None) == (pixels is None):
            raise ValueError("give exactly one of recon_latent or recon_pixels")
        if latent is None:
            if tuple(pixels.shape[-2:]) != (self.image_size, self.image_size):
                raise ValueError(f"recon_pixels side {tuple(pixels.shape[-2:])} != model.recon.image_size {self.image_size}")
            latent = encode_latent(self.vae, pixels)
        expected = (self.latent_channels, self.latent_size, self.latent_size)
        if latent.dim() != 4 or tuple(latent.shape[1:]) != expected:
            raise ValueError(f"recon_latent must be (N, {', '.join(map(str, expected))}), got {tuple(latent.shape)}")
        return latent


class ReconstructionHead(LatentTargetHead):
    """L_rec from a visual cue: ``forward(cue, pooled, latent=.. | pixels=..) -> scalar``."""

    def __init__(self, epigone: Epigone, denoiser, vae, *, image_size: int, logit_mean: float = 0.0,
                 logit_std: float = 1.0, sample_steps: int = 28) -> None:
        super().__init__(vae, image_size=image_size)
        self.epigone, self.denoiser = epigone, denoiser
        self.logit_mean, self.logit_std, self.sample_steps = logit_mean, logit_std, sample_steps
        _check_geometry(denoiser.config, self.latent_channels, self.latent_size, image_size)

    def trainable_parts(self) -> dict[str, nn.Module]:
        """Epigone and the MMDiT, by stage name."""
        return {"epigone": self.epigone, "denoiser": self.denoiser}

    def velocity(self, z_t: torch.Tensor, t: torch.Tensor, cue: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """v_theta(z_t, t, Epigone([cue, pooled]))."""
        context, pooled_proj = self.epigone(cue, pooled)  # (N, n, C), (N, Cp)
        dtype = self.denoiser.dtype
        return self.denoiser(
            hidden_states=z_t.to(dtype),
            encoder_hidden_states=context.to(dtype),
            pooled_projections=pooled_proj.to(dtype),
            timestep=(t * TIMESTEP_SCALE).to(dtype),
            return_dict=False,
        )[0]

    def forward(self, cue: torch.Tensor, pooled: torch.Tensor, *, latent: torch.Tensor | None = None,
                pixels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """L_rec = mean ||z - z_theta||^2 after one denoising step from a logit-normal t."""
        z = self.target(latent, pixels).float()  # (N, C, s, s)
        if z.shape[0] != cue.shape[0]:
            raise ValueError(f"reconstruction: {cue.shape[0]} visual cues but {z.shape[0]} targets")
        u = torch.randn(z.shape[0], generator=generator, device=z.device) * self.logit_std + self.logit_mean
        t = torch.sigmoid(u)  # (N,)
        eps = torch.randn(z.shape, generator=generator, device=z.device)
        t4 = t.view(-1, 1, 1, 1)
        z_t = (1.0 - t4) * z + t4 * eps
        z_theta = z_t - t4 * self.velocity(z_t, t, cue, pooled).float()
        return ((z - z_theta) ** 2).mean()

    @torch.no_grad()
    def sample(self, cue: torch.Tensor, pooled: torch.Tensor, steps: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstructions (N, 3, S, S) in [-1, 1]: Euler integration of the flow from noise (t=1) to t=0."""
        steps = steps or self.sample_steps
        shape = (cue.shape[0], self.latent_channels, self.latent_size, self.latent_size)
        z = torch.randn(shape, generator=generator, device=cue.device)
        ts = torch.linspace(1.0, 0.0, steps + 1, device=cue.device)
        for t, t_next in zip(ts[:-1], ts[1:]):
            v = self.velocity(z, t.expand(shape[0]), cue, pooled).float()
            z = z + (t_next - t) * v  # dz/dt = v
        return decode_latent(self.vae, z)


def _check_geometry(config, channels: int, latent_size: int, image_size: int) -> None:
    """Fail at build time when the VAE latent does not fit the denoiser."""
    if config.in_channels != channels:
        raise ValueError(f"denoiser in_channels {config.in_channels} != VAE latent_channels {channels}")
    if latent_size % config.patch_size:
        raise ValueError(f"latent side {latent_size} (image {image_size}) is not a multiple of patch_size {config.patch_size}")
    if config.pos_embed_max_size is not None and latent_size // config.patch_size > config.pos_embed_max_size:
        raise ValueError(
            f"latent side {latent_size} / patch_size {config.patch_size} exceeds pos_embed_max_size {config.pos_embed_max_size}"
        )
