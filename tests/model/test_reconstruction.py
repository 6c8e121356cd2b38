"""Reconstruction head (Eq. 3-4 with SD3 rectified flow), the ROSS-style cue, VDEP and the LM loss split."""

from __future__ import annotations

import pytest
import torch
from model_helpers import tiny_config

import vlsa
from vlsa.model.reconstruction import decode_latent, encode_latent
from vlsa.model.vdep import vdep_loss
from vlsa.model.vlm import lm_losses


def cue_for(model, batch):
    proj = model.encode_images(batch["pixel_lo"], batch["pixel_hi"], batch["tile_mask"])
    return proj.cue, proj.pooled


def test_loss_is_one_rectified_flow_step(tiny_model, two_image_batch):
    head = tiny_model.recon_head
    with torch.no_grad():
        cue, pooled = cue_for(tiny_model, two_image_batch)
        z = encode_latent(head.vae, two_image_batch["recon_pixels"])
        loss = head(cue, pooled, latent=z, generator=torch.Generator().manual_seed(7))
        g = torch.Generator().manual_seed(7)  # the same draws, by hand
        t = torch.sigmoid(torch.randn(2, generator=g) * head.logit_std + head.logit_mean).view(-1, 1, 1, 1)
        eps = torch.randn(z.shape, generator=g)
        z_t = (1 - t) * z + t * eps
        context, pooled_proj = head.epigone(cue, pooled)
        v = head.denoiser(hidden_states=z_t, encoder_hidden_states=context, pooled_projections=pooled_proj,
                          timestep=t.flatten() * 1000).sample
        expected = ((z - (z_t - t * v)) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    assert z.shape == (2, 16, 8, 8)


def test_cached_latent_equals_pixels(tiny_model, two_image_batch):
    head = tiny_model.recon_head
    with torch.no_grad():
        cue, pooled = cue_for(tiny_model, two_image_batch)
        pixels = two_image_batch["recon_pixels"]
        from_pixels = head(cue, pooled, pixels=pixels, generator=torch.Generator().manual_seed(1))
        latent = encode_latent(head.vae, pixels)
        from_latent = head(cue, pooled, latent=latent, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(from_pixels, from_latent)
    raw = head.vae.encode(pixels).latent_dist.mode()
    torch.testing.assert_close(latent, (raw - head.vae.config.shift_factor) * head.vae.config.scaling_factor)


def test_sample_decodes_images(tiny_model, two_image_batch):
    images = tiny_model.reconstruct(two_image_batch["pixel_lo"], two_image_batch["pixel_hi"],
                                    two_image_batch["tile_mask"], steps=3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32)
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
    latent = torch.zeros(1, 16, 8, 8)
    assert decode_latent(tiny_model.recon_head.vae, latent).shape == (1, 3, 32, 32)


def test_the_frozen_vae_is_a_codec_outside_the_module_tree(fresh_model):
    """Not in parameters or state_dict (so never partitioned by ZeRO-3 nor checkpointed), yet moved and cast."""
    head = fresh_model.recon_head
    vae = {id(p) for p in head.vae.parameters()}
    assert vae and not vae & {id(p) for p in fresh_model.parameters()}
    assert not [k for k in fresh_model.state_dict() if ".vae." in k]
    fresh_model.to(torch.float64).train()
    assert all(p.dtype == torch.float64 for p in head.vae.parameters())
    assert not head.vae.training and not any(p.requires_grad for p in head.vae.parameters())


def test_ross_conditioning_reaches_the_llm(cache_dir, two_image_batch):
    """With llm_hidden conditioning, L_rec's gradient flows through the LLM's hidden states."""
    model = vlsa.build_model(tiny_config(cache_dir, "model.recon.conditioning=llm_hidden")).train()
    model.set_loss_weights(0.0, 1.0)
    model(**two_image_batch).loss.backward()
    llm_grad = sum(p.grad.abs().sum() for p in model.language_model.parameters() if p.grad is not None)
    assert llm_grad > 0
    images = model.reconstruct(two_image_batch["pixel_lo"], two_image_batch["pixel_hi"], two_image_batch["tile_mask"], steps=2)
    assert images.shape == (2, 3, 32, 32)


def test_vdep_pairs_next_image_position():
    hidden = torch.zeros(1, 6, 2)
    targets = torch.arange(12, dtype=torch.float).view(1, 6, 2)
    index = torch.tensor([[-1, 0, 0, 0, -1, -1]])  # three image tokens at positions 1-3
    hidden[0, 1], hidden[0, 2] = targets[0, 2], targets[0, 3]  # perfect next-position predictions
    assert vdep_loss(hidden, targets, index, autoregressive=True) == 0
    same = vdep_loss(hidden, targets, index, autoregressive=False)
    expected = ((hidden[0, 1:4] - targets[0, 1:4]) ** 2).sum(-1).mean()
    torch.testing.assert_close(same, expected)
    assert vdep_loss(hidden, targets, index, sample_mask=torch.tensor([False])) is None


def test_vdep_in_the_model_and_its_batch_split(cache_dir, two_image_batch):
    model = vlsa.build_model(tiny_config(cache_dir, "model.vdep.enabled=true", "model.vdep.alpha=0.5"))
    model.eval()  # no split outside training: both losses over every sample
    out = model(**two_image_batch)
    assert out.loss_vdep is not None and out.loss_vdep > 0
    torch.testing.assert_close(out.loss, out.loss_lm + out.loss_rec + 0.5 * out.loss_vdep)
    per_sample = [model(**{k: v[i:i + 1] for k, v in two_image_batch.items()}) for i in range(2)]
    model.train()
    model.set_loss_weights(1.0, 1.0, pretraining=True)  # pre-training step on doubled data: each sample's mode
    with pytest.raises(ValueError, match="vdep_mode"):
        model(**two_image_batch)
    split = model(**two_image_batch, vdep_mode=torch.tensor([True, False]))
    torch.testing.assert_close(split.loss_lm, per_sample[1].loss_lm, atol=1e-4, rtol=1e-4)  # L over plain-mode sample 1
    torch.testing.assert_close(split.loss_vdep, per_sample[0].loss_vdep, atol=1e-4, rtol=1e-4)  # L_vdep over sample 0
    model.set_loss_weights(1.0, 1.0, pretraining=False)  # fine-tuning: LLaVA's plain objective, as the paper
    assert model(**two_image_batch).loss_vdep is None


def test_lm_loss_split_between_sft_and_ssft():
    logits = torch.randn(1, 5, 7)
    labels = torch.tensor([[-100, 1, 2, 3, 4]])
    ssft = torch.tensor([[False, False, False, True, True]])
    total, sft, ssft_loss = lm_losses(logits, labels, ssft)
    per = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], reduction="none")
    torch.testing.assert_close(total, per.mean())
    torch.testing.assert_close(sft, per[:2].mean())
    torch.testing.assert_close(ssft_loss, per[2:].mean())
    assert lm_losses(logits, labels, torch.zeros_like(ssft))[2] is None
