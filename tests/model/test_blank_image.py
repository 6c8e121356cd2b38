"""Text-only samples: a batch without images runs the image path on a blank image whose losses are zero."""

from __future__ import annotations

import pytest
import torch
from model_helpers import make_batch, solid, tiny_config

import vlsa

from vlsa.model.params import apply_stage
from vlsa.model.vlm import lm_losses

TEXTS = ["Name a colour. red", "Which shape has three sides? a triangle"]


def text_only_batch(model, texts=TEXTS, latent: bool = False) -> dict:
    """A collated text-only batch: no placeholders, image tensors with zero rows (as the collate gives them);
    ``latent``: the reconstruction target as cached latents instead of pixels."""
    tok = model.tokenizer(texts, padding=True, return_tensors="pt")
    side, recon = model.image_size, model.config.recon.image_size
    if latent:
        head = model.recon_head
        target = {"recon_latent": torch.zeros(0, head.latent_channels, head.latent_size, head.latent_size)}
    else:
        target = {"recon_pixels": torch.zeros(0, 3, recon, recon)}
    return target | {
        "input_ids": tok.input_ids,
        "attention_mask": tok.attention_mask,
        "labels": tok.input_ids.masked_fill(tok.attention_mask == 0, -100),
        "ssft_mask": torch.zeros_like(tok.input_ids, dtype=torch.bool),
        "image_counts": torch.zeros(len(texts), dtype=torch.long),
        "pixel_lo": torch.zeros(0, 3, side, side),
        "pixel_hi": torch.zeros(0, 1, 3, side, side),
        "tile_mask": torch.zeros(0, 1, dtype=torch.bool),
    }


def _grads(model, prefix: str = "") -> dict[str, torch.Tensor | None]:
    params = model.named_parameters()
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in params if n.startswith(prefix)}


def _lm_loss_without_image_path(model, batch) -> torch.Tensor:
    """L of a text-only batch as computed before the blank path existed: splice, LLM, cross-entropy."""
    keys = ("input_ids", "attention_mask", "image_counts", "pixel_lo", "pixel_hi", "tile_mask", "labels", "ssft_mask")
    spliced, proj = model.prepare_inputs(*(batch[k] for k in keys))
    assert proj is None
    out = model.language_model(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                               use_cache=False)
    return lm_losses(out.logits, spliced.labels, spliced.ssft_mask)[0]


NO_RECON = ("model.recon.enabled=false", "train.stages.0.lr={projector: 1.0e-3, llm: 1.0e-3}",
            "train.stages.1.lr={projector: 1.0e-3, vision: 1.0e-3, llm: 1.0e-3}")


@pytest.mark.parametrize("overrides, latent", [((), False), ((), True), (("model.recon.conditioning=llm_hidden",), False),
                                               (NO_RECON, False)], ids=["vlsa", "vlsa_latent", "llm_hidden", "no_recon"])
def test_text_only_batch_gives_the_llm_the_same_loss_and_gradients(cache_dir, overrides, latent):
    cfg = tiny_config(cache_dir, *overrides)
    model = vlsa.build_model(cfg).train()
    apply_stage(model, cfg.train.stages[1])  # everything trainable
    batch = text_only_batch(model, latent=latent)

    reference = _lm_loss_without_image_path(model, batch)
    reference.backward()
    expected = _grads(model, "language_model.")
    model.zero_grad(set_to_none=True)

    out = model(**batch)
    out.loss.backward()
    assert out.loss_rec is None and out.loss_vdep is None
    assert torch.equal(out.loss, reference) and torch.equal(out.loss_lm, reference)
    got = _grads(model)
    for name, grad in expected.items():
        assert torch.equal(got[name], grad), name
    image_path = {n: g for n, g in got.items() if not n.startswith("language_model.")}
    assert all(not g.any() for g in image_path.values() if g is not None), [n for n, g in image_path.items()
                                                                            if g is not None and g.any()]
    # the parameters a batch with images gives a gradient (all but the vision layers after select_layer) get one here
    model.zero_grad(set_to_none=True)
    model(**make_batch(model, [solid(60, 40)], ["<image>\nWhat color? red"])).loss.backward()
    with_image = {n for n, g in _grads(model).items() if g is not None}
    assert {n for n, g in got.items() if g is not None} == with_image
    assert len(with_image) > len(expected) + 20


def test_loss_rec_is_over_image_samples_only(tiny_model):
    images = [solid(451, 300), solid(60, 20, (20, 160, 40))]
    with_images = make_batch(tiny_model, images, ["<image>\nWhat color? red", "<image>\nWhat shape? a square"])
    texts = ["<image>\nWhat color? red", "Say hi. hi", "<image>\nWhat shape? a square", "Name a shape. a circle"]
    mixed = make_batch(tiny_model, images, texts)

    def recon(batch):
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            return tiny_model(**batch).loss_rec

    alone = recon(with_images)
    assert torch.allclose(recon(mixed), alone, rtol=1e-6, atol=0), (recon(mixed), alone)
    assert recon(text_only_batch(tiny_model)) is None  # nothing to reconstruct: not scored, not zero
