"""The full VLSA model: vision tower -> projector -> LLM, plus the training-only reconstruction head.

Attributes follow transformers' LLaVA (``vision_tower``, ``projector``, ``language_model``) so
checkpoint keys map simply; ``recon_head`` (Epigone, denoiser, frozen VAE) exists only when
``model.recon.enabled``. ``forward(**batch)`` takes the collated batch and returns a ``VLSAOutput``
whose ``loss`` is ``w_lm * loss_lm + w_rec * loss_rec + alpha * loss_vdep``. The stage weights are
set with ``set_loss_weights(w_lm, w_rec, pretraining)`` (``vlsa.model.params.apply_stage`` does it
together with the freezing); the weights default to 1 and ``pretraining`` to True. ``pretraining``
only matters for VDEP, which the paper applies in pre-training with its half/half batch split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlsa import tokens
from vlsa.config import Config
from vlsa.model import builder
from vlsa.model.encoding import CompressiveEncoder
from vlsa.model.projectors import ProjectorOutput, build_projector
from vlsa.model.splice import IGNORE, Spliced, check_image_counts, splice_visual_tokens
from vlsa.model.vdep import vdep_loss

BATCH_TENSORS = {
    "input_ids", "attention_mask", "labels", "ssft_mask", "image_counts", "pixel_lo", "pixel_hi",
    "tile_mask", "recon_pixels", "recon_latent",
}


@dataclass
class VLSAOutput:
    """Losses (scalars; None when a part is off or has nothing to score) and the LLM logits (B, T, V)."""

    loss: torch.Tensor | None
    loss_lm: torch.Tensor | None
    loss_rec: torch.Tensor | None
    loss_vdep: torch.Tensor | None
    loss_lm_sft: torch.Tensor | None
    loss_lm_ssft: torch.Tensor | None
    logits: torch.Tensor


class VLSAModel(nn.Module):
    """Vision tower, projector, language model and (for training) the reconstruction head."""

    def __init__(self, config: Config, vision_tower, projector: nn.Module, language_model, tokenizer,
                 recon_head: nn.Module | None = None) -> None:
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.vision_tower, self.projector, self.language_model = vision_tower, projector, language_model
        self.recon_head = recon_head
        self.image_token_id = tokenizer.convert_tokens_to_ids(tokens.IMAGE_TOKEN)
        self.w_lm, self.w_rec, self.pretraining = 1.0, 1.0, True

    @classmethod
    def from_config(cls, cfg: Config, zero3: dict | None = None) -> "VLSAModel":
        """Build every part of ``cfg`` through ``builder.load_component``; new modules are seeded.

        ``zero3``: a ZeRO-3 DeepSpeed config under which every part is partitioned as it is created.
        """
        from vlsa.model.zero3 import partitioning

        tokenizer = builder.build_model_tokenizer(cfg)
        vision, llm = builder.build_vision(cfg, zero3), builder.build_llm(cfg, zero3)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.model.seed)
            with partitioning(zero3):
                _fit_vocabulary(llm, tokenizer)
                d, D = vision.config.hidden_size, llm.get_input_embeddings().embedding_dim
                projector = build_projector(cfg.model.projector, d, D, num_patches=_num_patches(vision.config))
            recon_head = builder.build_recon_head(cfg, D, zero3) if cfg.model.recon.enabled else None
        return cls(cfg, vision, projector, llm, tokenizer, recon_head)

    # ------------------------------------------------------------------------------- geometry

    @property
    def image_size(self) -> int:
        """Side of the vision tower's input (h = w)."""
        return self.vision_tower.config.image_size

    @property
    def num_patches(self) -> int:
        """l: patch tokens per view."""
        return _num_patches(self.vision_tower.config)

    def token_count(self, num_tiles: int) -> int:
        """Visual tokens the LLM receives for an image cut into ``num_tiles`` tiles."""
        return self.projector.token_count(num_tiles)

    def encoder(self) -> CompressiveEncoder:
        """The image -> (pixel_lo, pixel_hi) encoder matching this vision tower."""
        return CompressiveEncoder(self.image_size, self.config.model.encoding.max_tiles, self.config.model.vision.kind)

    def set_loss_weights(self, w_lm: float, w_rec: float, pretraining: bool = True) -> None:
        """Stage weights of L and L_rec; ``pretraining``: an alignment stage (VDEP on, with its batch split)."""
        self.w_lm, self.w_rec, self.pretraining = float(w_lm), float(w_rec), bool(pretraining)

    def _vdep_active(self) -> bool:
        vdep = self.config.model.vdep
        return vdep.enabled and (self.pretraining or vdep.in_finetuning)

    # ------------------------------------------------------------------------------- vision

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens (K, l, d) of the ``select_layer`` hidden state (CLS dropped for CLIP)."""
        trainable = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            out = self.vision_tower(pixels.to(self.vision_tower.dtype), output_hidden_states=True)
        hidden = out.hidden_states[self.config.model.vision.select_layer]  # (K, 1+l or l, d)
        return hidden[:, -self.num_patches:]

    def encode_images(self, pixel_lo: torch.Tensor, pixel_hi: torch.Tensor, tile_mask: torch.Tensor | None) -> ProjectorOutput:
        """Projector outputs of N images from pixel_lo (N, 3, h, w), pixel_hi (N, M, 3, h, w), tile_mask (N, M)."""
        tile_mask = self._check_pixels(pixel_lo, pixel_hi, tile_mask)
        n, m = tile_mask.shape
        l = self.num_patches
        feats = self.vision_features(torch.cat([pixel_lo, pixel_hi[tile_mask]]))  # (N + real tiles, l, d)
        v_lo = feats[:n]
        v_hi = feats.new_zeros(n, m, l, feats.shape[-1])
        v_hi[tile_mask] = feats[n:]
        hi_mask = tile_mask.repeat_interleave(l, dim=1)  # (N, M*l)
        return self.projector(v_lo, v_hi.view(n, m * l, -1), hi_mask)

    def _check_pixels(self, pixel_lo, pixel_hi, tile_mask) -> torch.Tensor:
        channels, side = self.vision_tower.config.num_channels, self.image_size
        if pixel_lo.dim() != 4 or pixel_lo.shape[1] != channels:
            raise ValueError(f"pixel_lo must be (N, {channels}, {side}, {side}), got {tuple(pixel_lo.shape)}")
        if pixel_hi.dim() != 5 or pixel_hi.shape[2] != channels:
            raise ValueError(f"pixel_hi must be (N, M, {channels}, {side}, {side}), got {tuple(pixel_hi.shape)}")
        for name, x in (("pixel_lo", pixel_lo), ("pixel_hi", pixel_hi)):
            if tuple(x.shape[-2:]) != (side, side):
                raise ValueError(f"{name} side {tuple(x.shape[-2:])} != vision input {side}x{side}")
        if pixel_hi.shape[0] != pixel_lo.shape[0] or pixel_lo.shape[0] == 0:
            raise ValueError(f"pixel_lo has {pixel_lo.shape[0]} images and pixel_hi {pixel_hi.shape[0]}; need the same, > 0")
        if tile_mask is None:
            return torch.ones(pixel_hi.shape[:2], dtype=torch.bool, device=pixel_hi.device)
        if tuple(tile_mask.shape) != tuple(pixel_hi.shape[:2]):
            raise ValueError(f"tile_mask shape {tuple(tile_mask.shape)} != pixel_hi tiles {tuple(pixel_hi.shape[:2])}")
        if not tile_mask.any(dim=1).all():
            raise ValueError(f"every image needs at least one tile; tile_mask rows without one: {(~tile_mask.any(1)).nonzero().flatten().tolist()}")
        return tile_mask.bool()

    # ------------------------------------------------------------------------------- LLM inputs

    def prepare_inputs(self, input_ids, attention_mask, image_counts=None, pixel_lo=None, pixel_hi=None,
                       tile_mask=None, labels=None, ssft_mask=None, pad_left=False) -> tuple[Spliced, ProjectorOutput | None]:
        """Spliced LLM inputs and the projector outputs (None for a text-only batch)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if image_counts is None:
            image_counts = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        num_images = 0 if pixel_lo is None else pixel_lo.shape[0]
        check_image_counts(input_ids, attention_mask, image_counts, num_images, self.image_token_id)
        proj = self.encode_images(pixel_lo, pixel_hi, tile_mask) if num_images else None
        spliced = splice_visual_tokens(
            input_ids, attention_mask, self.language_model.get_input_embeddings(), [] if proj is None else proj.tokens,
            self.image_token_id, labels=labels, ssft_mask=ssft_mask, pad_left=pad_left,
            max_length=self.config.model.llm.max_length,
        )
        return spliced, proj

    # ------------------------------------------------------------------------------- training

    def forward(self, input_ids, attention_mask=None, labels=None, ssft_mask=None, image_counts=None,
                pixel_lo=None, pixel_hi=None, tile_mask=None, recon_pixels=None, recon_latent=None, **extra) -> VLSAOutput:
        """Losses and logits of one collated batch (non-tensor extra keys such as ``ids`` are ignored)."""
        unknown = sorted(k for k, v in extra.items() if isinstance(v, torch.Tensor))
        if unknown:
            raise TypeError(f"unexpected batch tensors {unknown}; known: {sorted(BATCH_TENSORS)}")
        spliced, proj = self.prepare_inputs(input_ids, attention_mask, image_counts, pixel_lo, pixel_hi,
                                            tile_mask, labels, ssft_mask)
        vdep_on, cond_hidden = self._vdep_active() and proj is not None, self._conditions_on_llm()
        vdep_samples = self._vdep_samples(input_ids.shape[0], input_ids.device) if vdep_on else None
        lm_labels = spliced.labels
        if lm_labels is not None and vdep_on and self._splits_batch():
            lm_labels = lm_labels.masked_fill(vdep_samples[:, None], IGNORE)  # VDEP half: image loss only
        out = self.language_model(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                                  output_hidden_states=vdep_on or cond_hidden, use_cache=False)
        loss_lm, loss_sft, loss_ssft = lm_losses(out.logits, lm_labels, spliced.ssft_mask)
        loss_vdep = None
        if vdep_on:
            loss_vdep = vdep_loss(out.hidden_states[-1], spliced.inputs_embeds, spliced.image_index,
                                  autoregressive=self.config.model.vdep.autoregressive, sample_mask=vdep_samples)
        loss_rec = self._recon_loss(proj, spliced, out, recon_pixels, recon_latent)
        total = self._total(loss_lm, loss_rec, loss_vdep)
        return VLSAOutput(total, loss_lm, loss_rec, loss_vdep, loss_sft, loss_ssft, out.logits)

    def _conditions_on_llm(self) -> bool:
        return self.recon_head is not None and self.config.model.recon.conditioning == "llm_hidden"

    def _splits_batch(self) -> bool:
        """VDEP's half/half split: pre-training steps only (evaluation scores every sample both ways)."""
        return self.training and self.pretraining and self.config.model.vdep.split_batch

    def _vdep_samples(self, batch: int, device) -> torch.Tensor:
        """Samples in VDEP mode: a random half when splitting (pre-training), else all."""
        if not self._splits_batch():
            return torch.ones(batch, dtype=torch.bool, device=device)
        half = batch // 2 if batch > 1 else int(torch.randint(0, 2, ()))  # a single sample: a coin flip
        mask = torch.zeros(batch, dtype=torch.bool)
        mask[torch.randperm(batch)[:half]] = True
        return mask.to(device)

    def _recon_loss(self, proj, spliced: Spliced, out, recon_pixels, recon_latent) -> torch.Tensor | None:
        """L_rec, or None without a reconstruction head, images or targets."""
        if recon_pixels is not None and recon_latent is not None:
            raise ValueError("the batch has both recon_pixels and recon_latent; give exactly one")
        if self.recon_head is None or proj is None:
            return None
        if recon_pixels is None and recon_latent is None:
            if self.training and self.w_rec:
                raise ValueError("model.recon.enabled but the batch has neither recon_pixels nor recon_latent")
            return None
        cue, pooled = proj.cue, proj.pooled
        if self._conditions_on_llm():
            cue, pooled = hidden_cue(out.hidden_states[-1], spliced.spans, proj.cue.shape[1])
        return self.recon_head(cue, pooled, latent=recon_latent, pixels=recon_pixels)

    def _total(self, loss_lm, loss_rec, loss_vdep) -> torch.Tensor | None:
        """w_lm L + w_rec L_rec + alpha L_vdep over the parts present (None without any, e.g. no labels)."""
        weighted = [(self.w_lm, loss_lm), (self.w_rec, loss_rec), (self.config.model.vdep.alpha, loss_vdep)]
        parts = [w * loss for w, loss in weighted if loss is not None]
        return sum(parts[1:], parts[0]) if parts else None

    # ------------------------------------------------------------------------------- inference

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, image_counts=None, pixel_lo=None, pixel_hi=None,
                 tile_mask=None, **generate_kwargs) -> torch.Tensor:
        """New token ids (B, T_new) from prompts with ``<image>`` placeholders; greedy unless told otherwise."""
        spliced, _ = self.prepare_inputs(input_ids, attention_mask, image_counts, pixel_lo, pixel_hi, tile_mask, pad_left=True)
        generate_kwargs.setdefault("do_sample", False)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        return self.language_model.generate(
            inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask, **generate_kwargs
        )

    @torch.no_grad()
    def answer(self, image, prompt: str, max_new_tokens: int = 32) -> str:
        """Greedy answer to ``prompt`` about one PIL RGB ``image`` (``<image>`` is prepended when absent)."""
        if tokens.IMAGE_TOKEN not in prompt:
            prompt = f"{tokens.IMAGE_TOKEN}\n{prompt}"
        pixel_lo, pixel_hi = self.encoder()(image)
        device = self.language_model.device
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        new = self.generate(ids, torch.ones_like(ids), torch.ones(1, dtype=torch.long, device=device),
                            pixel_lo[None].to(device), pixel_hi[None].to(device), max_new_tokens=max_new_tokens)
        return self.tokenizer.decode(new[0], skip_special_tokens=True)

    @torch.no_grad()
    def reconstruct(self, pixel_lo, pixel_hi, tile_mask=None, steps: int | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (N, 3, S, S) in [-1, 1] sampled from the visual cue of each image alone (Fig. 4)."""
        if self.recon_head is None:
            raise ValueError("reconstruct() needs model.recon.enabled (this model has no denoiser)")
        proj = self.encode_images(pixel_lo, pixel_hi, tile_mask)
        cue, pooled = proj.cue, proj.pooled
        if self._conditions_on_llm():
            n = pixel_lo.shape[0]
            ids = torch.full((n, 1), self.image_token_id, dtype=torch.long, device=pixel_lo.device)
            spliced, _ = self.prepare_inputs(ids, torch.ones_like(ids), torch.ones(n, dtype=torch.long, device=ids.device),
                                             pixel_lo, pixel_hi, tile_mask)
            out = self.language_model(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                                      output_hidden_states=True, use_cache=False)
            cue, pooled = hidden_cue(out.hidden_states[-1], spliced.spans, proj.cue.shape[1])
        return self.recon_head.sample(cue, pooled, steps=steps, generator=generator)


def lm_losses(logits, labels, ssft_mask):
    """(L over all label positions, L over SFT positions, L over SSFT positions); parts None when empty."""
    if labels is None:
        return None, None, None
    per_token = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE,
                                reduction="none")  # (B, T-1)
    valid = labels[:, 1:] != IGNORE
    ssft = ssft_mask[:, 1:] & valid if ssft_mask is not None else torch.zeros_like(valid)
    loss = per_token[valid].mean() if valid.any() else logits.sum() * 0.0  # keeps the graph for empty batches
    sft = per_token[valid & ~ssft].mean() if (valid & ~ssft).any() else None
    return loss, sft, per_token[ssft].mean() if ssft.any() else None


def hidden_cue(hidden: torch.Tensor, spans, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ROSS-style cue: the LLM's last hidden states over each image span (first ``length`` tokens) and their mean."""
    cue = torch.stack([hidden[b, start:start + length] for b, start, _ in spans])  # (N, length, D)
    pooled = torch.stack([hidden[b, start:start + n].mean(dim=0) for b, start, n in spans])  # (N, D)
    return cue, pooled


def _num_patches(vision_config) -> int:
    return (vision_config.image_size // vision_config.patch_size) ** 2


def _fit_vocabulary(llm, tokenizer) -> None:
    """Grow the LLM's embeddings to the tokenizer (special tokens were added) and align pad/eos ids.

    transformers draws the new rows around the mean of the old ones; under ZeRO-3 its mean-resizing
    writes into a partitioned matrix it has not gathered, so there the new rows start from the
    model's own initialiser (stage-start weights, when a stage has them, overwrite them).
    """
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        from vlsa.model.zero3 import is_partitioned

        partitioned = is_partitioned(llm.get_input_embeddings().weight)
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=not partitioned)
    llm.config.pad_token_id = tokenizer.pad_token_id
    if llm.generation_config is not None:
        llm.generation_config.pad_token_id = tokenizer.pad_token_id
