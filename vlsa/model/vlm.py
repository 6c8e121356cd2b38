"""The full VLSA model: vision tower -> projector -> LLM, plus the training-only reconstruction head.

Attributes follow transformers' LLaVA (``vision_tower``, ``projector``, ``language_model``) so
checkpoint keys map simply; ``recon_head`` (Epigone, denoiser, frozen VAE) exists only when
``model.recon.enabled``. ``forward(**batch)`` takes the collated batch and returns a ``VLSAOutput``
whose ``loss`` is ``w_lm * loss_lm + w_rec * loss_rec + alpha * loss_vdep``. The stage weights are
set with ``set_loss_weights(w_lm, w_rec, pretraining)`` (``vlsa.model.params.apply_stage`` does it
together with the freezing); the weights default to 1 and ``pretraining`` to True. ``pretraining``
only matters for VDEP, which the paper applies in pre-training on doubled data: each sample once in
VDEP mode (image loss only) and once in plain mode (text loss), marked per sample by ``vdep_mode``.
A batch without any image still runs the vision tower, projector and reconstruction head, on one blank
image whose losses are zero (``blank_image``): under ZeRO-3 every rank must run the same modules on
every step. A batch mixing image and text-only samples needs no blank: its images run the same modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from vlsa import tokens
from vlsa.config import ModelConfig
from vlsa.model.geometry import num_patches
from vlsa.model.lm_loss import chunked_lm_losses, lm_losses
from vlsa.model.projectors import ProjectorOutput
from vlsa.model.splice import Spliced, check_image_counts, splice_visual_tokens
from vlsa.model.vdep import vdep_loss
from vlsa.model.views import make_encoder

BATCH_TENSORS = {
    "input_ids", "attention_mask", "labels", "ssft_mask", "image_counts", "pixel_lo", "pixel_hi",
    "tile_mask", "recon_pixels", "recon_latent", "vdep_mode", "image_sizes",
}


@dataclass
class VLSAOutput(ModelOutput):
    """Losses (scalars; None when a part is off or has nothing to score) and the LLM logits (B, T, V)
    (None when the LM loss is chunked: ``model.llm.loss_chunks``).

    A ``ModelOutput`` (a dict underneath), read by attribute like a dataclass: DeepSpeed ZeRO-3 finds
    a module's output tensors only inside tuples, lists and dicts, and hooks them to run the module's
    bookkeeping before its backward pass; a plain dataclass hides them (and DeepSpeed warns).
    """

    loss: torch.Tensor | None = None
    loss_lm: torch.Tensor | None = None
    loss_rec: torch.Tensor | None = None
    loss_vdep: torch.Tensor | None = None
    loss_lm_sft: torch.Tensor | None = None
    loss_lm_ssft: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class VLSAModel(nn.Module):
    """Vision tower, projector, language model and (for training) the reconstruction head.

    ``config`` is the ``ModelConfig`` the parts were built from (``vlsa.model.builder.build_model``
    builds them); the model reads only its own section of a run's config.
    """

    def __init__(self, config: ModelConfig, vision_tower, projector: nn.Module, language_model, tokenizer,
                 recon_head: nn.Module | None = None) -> None:
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.vision_tower, self.projector, self.language_model = vision_tower, projector, language_model
        self.recon_head = recon_head
        self.image_token_id = tokenizer.convert_tokens_to_ids(tokens.IMAGE_TOKEN)
        self.w_lm, self.w_rec, self.pretraining = 1.0, 1.0, True

    # ------------------------------------------------------------------------------- geometry

    @property
    def image_size(self) -> int:
        """Side of the vision tower's input (h = w)."""
        return self.vision_tower.config.image_size

    @property
    def num_patches(self) -> int:
        """l: patch tokens per view."""
        return num_patches(self.vision_tower.config.image_size, self.vision_tower.config.patch_size)

    def token_count(self, num_tiles: int) -> int:
        """Visual tokens the LLM receives for an image cut into ``num_tiles`` tiles (for ``anyres``: an image
        that fills its grid; ``visual_tokens`` is exact for any image)."""
        return self.projector.token_count(num_tiles)

    def visual_tokens(self, height: int, width: int, num_tiles: int) -> int:
        """Visual tokens the LLM receives for an image of (height, width) cut into ``num_tiles`` tiles."""
        if hasattr(self.projector, "tokens_for_size"):
            return self.projector.tokens_for_size(height, width)
        return self.projector.token_count(num_tiles)

    def encoder(self):
        """The image -> (pixel_lo, pixel_hi) encoder this vision tower and projector take (``vlsa.model.views``)."""
        return make_encoder(self.config.projector.type, self.image_size, self.config.encoding, self.config.vision.kind)

    def set_loss_weights(self, w_lm: float, w_rec: float, pretraining: bool = True) -> None:
        """Stage weights of L and L_rec; ``pretraining``: an alignment stage (VDEP on, with its batch split)."""
        self.w_lm, self.w_rec, self.pretraining = float(w_lm), float(w_rec), bool(pretraining)

    def _vdep_active(self) -> bool:
        vdep = self.config.vdep
        return vdep.enabled and (self.pretraining or vdep.in_finetuning)

    # ------------------------------------------------------------------------------- vision

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens (K, l, d) of the ``select_layer`` hidden state (CLS dropped for CLIP)."""
        trainable = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            out = self.vision_tower(pixels.to(self.vision_tower.dtype), output_hidden_states=True)
        hidden = out.hidden_states[self.config.vision.select_layer]  # (K, 1+l or l, d)
        return hidden[:, -self.num_patches:]

    def encode_images(self, pixel_lo: torch.Tensor, pixel_hi: torch.Tensor, tile_mask: torch.Tensor | None,
                      image_sizes: torch.Tensor | None = None) -> ProjectorOutput:
        """Projector outputs of N images from pixel_lo (N, 3, h, w), pixel_hi (N, M, 3, h, w), tile_mask (N, M)
        and image_sizes (N, 2), the original (height, width) (needed by ``anyres`` only)."""
        tile_mask = self._check_pixels(pixel_lo, pixel_hi, tile_mask)
        n, m = tile_mask.shape
        l = self.num_patches
        feats = self.vision_features(torch.cat([pixel_lo, pixel_hi[tile_mask]]))  # (N + real tiles, l, d)
        v_lo = feats[:n]
        v_hi = feats.new_zeros(n, m, l, feats.shape[-1])
        v_hi[tile_mask] = feats[n:]
        hi_mask = tile_mask.repeat_interleave(l, dim=1)  # (N, M*l)
        return self.projector(v_lo, v_hi.view(n, m * l, -1), hi_mask, image_sizes=image_sizes)

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
                       tile_mask=None, labels=None, ssft_mask=None, pad_left=False,
                       image_sizes=None) -> tuple[Spliced, ProjectorOutput | None]:
        """Spliced LLM inputs and the projector outputs (None for a text-only batch)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if image_counts is None:
            image_counts = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        num_images = 0 if pixel_lo is None else pixel_lo.shape[0]
        check_image_counts(input_ids, attention_mask, image_counts, num_images, self.image_token_id)
        proj = self.encode_images(pixel_lo, pixel_hi, tile_mask, image_sizes) if num_images else None
        spliced = splice_visual_tokens(
            input_ids, attention_mask, self.language_model.get_input_embeddings(), [] if proj is None else proj.tokens,
            self.image_token_id, labels=labels, ssft_mask=ssft_mask, pad_left=pad_left,
            max_length=self.config.llm.max_length,
        )
        return spliced, proj

    # ------------------------------------------------------------------------------- training

    def forward(self, input_ids, attention_mask=None, labels=None, ssft_mask=None, image_counts=None,
                pixel_lo=None, pixel_hi=None, tile_mask=None, recon_pixels=None, recon_latent=None, vdep_mode=None,
                image_sizes=None, **extra) -> VLSAOutput:
        """Losses and logits of one collated batch (non-tensor extra keys such as ``ids`` are ignored)."""
        unknown = sorted(k for k, v in extra.items() if isinstance(v, torch.Tensor))
        if unknown:
            raise TypeError(f"unexpected batch tensors {unknown}; known: {sorted(BATCH_TENSORS)}")
        # A text-only batch still runs the image path, on a blank image (see blank_image); before the
        # LLM's embeddings, so that the modules run in the same order as for a batch with images.
        blank = pixel_lo is None or pixel_lo.shape[0] == 0
        blank_proj = self.encode_images(*self.blank_image(input_ids.device)) if blank else None
        spliced, proj = self.prepare_inputs(input_ids, attention_mask, image_counts, pixel_lo, pixel_hi,
                                            tile_mask, labels, ssft_mask, image_sizes=image_sizes)
        proj = blank_proj if blank else proj
        vdep_on, cond_hidden = self._vdep_active() and not blank, self._conditions_on_llm()
        vdep_samples = self._vdep_samples(vdep_mode, input_ids.shape[0], input_ids.device) if vdep_on else None
        lm_labels = spliced.labels
        if lm_labels is not None and vdep_on and self._splits_batch():
            lm_labels = lm_labels.masked_fill(vdep_samples[:, None], tokens.IGNORE_INDEX)  # VDEP mode: image loss only
        out, logits, (loss_lm, loss_sft, loss_ssft) = self._language_model(spliced, lm_labels, vdep_on or cond_hidden)
        loss_vdep = None
        if vdep_on:
            loss_vdep = vdep_loss(out.hidden_states[-1], spliced.inputs_embeds, spliced.image_index,
                                  autoregressive=self.config.vdep.autoregressive, sample_mask=vdep_samples)
        loss_rec = None if blank else self._recon_loss(proj, spliced, out, recon_pixels, recon_latent)
        total = self._total(loss_lm, loss_rec, loss_vdep)
        if blank and total is not None:
            total = total + self._blank_term(proj, from_pixels=recon_pixels is not None)
        return VLSAOutput(total, loss_lm, loss_rec, loss_vdep, loss_sft, loss_ssft, logits)

    def _language_model(self, spliced: Spliced, labels, hidden_states: bool):
        """(LLM output, logits, LM losses). With ``model.llm.loss_chunks`` the LLM's decoder runs without its head and
        the loss is chunked (no logits in the output); else the full head makes (B, T, V) logits."""
        chunks = self.config.llm.loss_chunks
        chunked = chunks > 0 and labels is not None
        llm = self.language_model.base_model if chunked else self.language_model
        out = llm(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                  output_hidden_states=hidden_states, use_cache=False)
        if chunked:
            head = self.language_model.get_output_embeddings()
            return out, None, chunked_lm_losses(out.last_hidden_state, head, labels, spliced.ssft_mask, chunks)
        return out, out.logits, lm_losses(out.logits, labels, spliced.ssft_mask)

    def blank_image(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One all-zero image (pixel_lo (1, 3, h, w), pixel_hi (1, m, 3, h, w), tile_mask (1, m), image_sizes (1, 2)):
        one tile, or for ``anyres`` an image filling its first grid of m tiles.

        Under ZeRO-3 a module's parameters are gathered by a collective when it runs, so every rank
        must run the same modules on every step: a micro-batch without any image runs the vision
        tower, projector, Epigone and denoiser on this blank image (LLaVA feeds a zero image for the
        same reason), and ``_blank_term`` keeps its contribution to every loss exactly zero.
        """
        channels, side = self.vision_tower.config.num_channels, self.image_size
        rows, cols = self.config.encoding.anyres_grids[0] if self.config.projector.type == "anyres" else (1, 1)
        pixel_lo = torch.zeros(1, channels, side, side, device=device)
        pixel_hi = torch.zeros(1, rows * cols, channels, side, side, device=device)
        sizes = torch.tensor([[rows * side, cols * side]], device=device)
        return pixel_lo, pixel_hi, torch.ones(1, rows * cols, dtype=torch.bool, device=device), sizes

    def _blank_term(self, proj: ProjectorOutput, from_pixels: bool) -> torch.Tensor:
        """0 x (the blank image's reconstruction loss + its projector outputs): exactly zero in value and in
        gradient, yet every parameter of the image path is in the graph, as on a rank with images. The target
        comes the way the batch's would (``from_pixels``: through the VAE), so even the VAE runs as there."""
        term = sum(t.float().sum() for t in proj.tokens) + proj.cue.float().sum() + proj.pooled.float().sum()
        if self.recon_head is not None:
            head = self.recon_head
            if from_pixels:
                target = {"pixels": proj.cue.new_zeros(1, 3, head.image_size, head.image_size, dtype=torch.float32)}
            else:
                side = head.latent_size
                target = {"latent": proj.cue.new_zeros(1, head.latent_channels, side, side, dtype=torch.float32)}
            term = term + head(proj.cue, proj.pooled, **target)  # the projector's cue in both conditionings
        return 0.0 * term

    def _conditions_on_llm(self) -> bool:
        return self.recon_head is not None and self.config.recon.conditioning == "llm_hidden"

    def _splits_batch(self) -> bool:
        """VDEP's two modes: pre-training steps only (evaluation scores every sample both ways)."""
        return self.training and self.pretraining and self.config.vdep.split_batch

    def _vdep_samples(self, vdep_mode: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """Samples in VDEP mode: the batch's ``vdep_mode`` (doubled data) when splitting, else all."""
        if not self._splits_batch():
            return torch.ones(batch, dtype=torch.bool, device=device)
        if vdep_mode is None:
            raise ValueError("a VDEP pre-training step needs the batch's `vdep_mode` (B,): train on "
                             "vlsa.data.doubling.DoubledDataset, which gives each sample once in each mode")
        if tuple(vdep_mode.shape) != (batch,):
            raise ValueError(f"vdep_mode must be ({batch},), got {tuple(vdep_mode.shape)}")
        return vdep_mode.to(device=device, dtype=torch.bool)

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
        weighted = [(self.w_lm, loss_lm), (self.w_rec, loss_rec), (self.config.vdep.alpha, loss_vdep)]
        parts = [w * loss for w, loss in weighted if loss is not None]
        return sum(parts[1:], parts[0]) if parts else None

    # ------------------------------------------------------------------------------- inference

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, image_counts=None, pixel_lo=None, pixel_hi=None,
                 tile_mask=None, image_sizes=None, **generate_kwargs) -> torch.Tensor:
        """New token ids (B, T_new) from prompts with ``<image>`` placeholders; greedy unless told otherwise."""
        spliced, _ = self.prepare_inputs(input_ids, attention_mask, image_counts, pixel_lo, pixel_hi, tile_mask,
                                         pad_left=True, image_sizes=image_sizes)
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
                            pixel_lo[None].to(device), pixel_hi[None].to(device), max_new_tokens=max_new_tokens,
                            image_sizes=torch.tensor([[image.height, image.width]], device=device))
        return self.tokenizer.decode(new[0], skip_special_tokens=True)

    @torch.no_grad()
    def reconstruct(self, pixel_lo, pixel_hi, tile_mask=None, steps: int | None = None,
                    generator: torch.Generator | None = None, image_sizes=None) -> torch.Tensor:
        """Images (N, 3, S, S) in [-1, 1] sampled from the visual cue of each image alone (Fig. 4)."""
        if self.recon_head is None:
            raise ValueError("reconstruct() needs model.recon.enabled (this model has no denoiser)")
        proj = self.encode_images(pixel_lo, pixel_hi, tile_mask, image_sizes)
        cue, pooled = proj.cue, proj.pooled
        if self._conditions_on_llm():
            n = pixel_lo.shape[0]
            ids = torch.full((n, 1), self.image_token_id, dtype=torch.long, device=pixel_lo.device)
            spliced, _ = self.prepare_inputs(ids, torch.ones_like(ids), torch.ones(n, dtype=torch.long, device=ids.device),
                                             pixel_lo, pixel_hi, tile_mask, image_sizes=image_sizes)
            out = self.language_model(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                                      output_hidden_states=True, use_cache=False)
            cue, pooled = hidden_cue(out.hidden_states[-1], spliced.spans, proj.cue.shape[1])
        return self.recon_head.sample(cue, pooled, steps=steps, generator=generator)


def hidden_cue(hidden: torch.Tensor, spans, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ROSS-style cue: the LLM's last hidden states over each image span (first ``length`` tokens) and their mean."""
    cue = torch.stack([hidden[b, start:start + length] for b, start, _ in spans])  # (N, length, D)
    pooled = torch.stack([hidden[b, start:start + n].mean(dim=0) for b, start, n in spans])  # (N, D)
    return cue, pooled
