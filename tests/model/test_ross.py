"""ROSS's own reconstruction head (paper 004, Sec. 4.2): encoder-block denoiser, DDPM epsilon loss."""

from __future__ import annotations

import pytest
import torch
from model_helpers import tiny_config

import vlsa
from vlsa.bench.flops import ModelDims, RossDims, Workload, count
from vlsa.model.params import apply_stage, stage_modules
from vlsa.model.reconstruction import encode_latent
from vlsa.model.ross import RossHead, align_condition

ROSS = ("model.recon.head=ross", "model.recon.conditioning=llm_hidden", "model.recon.ross.width=32",
        "model.recon.ross.layers=2", "model.recon.ross.heads=2", "model.recon.ross.train_timesteps=100",
        "train.stages.0.lr={projector: 3.0e-3, denoiser: 1.0e-3, llm: 3.0e-3}",  # no Epigone in ROSS
        "train.stages.1.lr={projector: 1.0e-3, denoiser: 3.0e-3, llm: 1.0e-3}")  # Tab. 6: vision frozen


@pytest.fixture(scope="module")
def ross_model(cache_dir):
    return vlsa.build_model(tiny_config(cache_dir, *ROSS))


def test_ross_head_replaces_epigone_and_mmdit(ross_model):
    head = ross_model.recon_head
    assert isinstance(head, RossHead) and not hasattr(head, "epigone")
    assert set(head.trainable_parts()) == {"denoiser"}
    assert all(isinstance(b.encoder, torch.nn.TransformerEncoderLayer) for b in head.denoiser.blocks)
    assert head.scheduler.config.prediction_type == "epsilon"
    assert "denoiser" in stage_modules(ross_model) and "epigone" not in stage_modules(ross_model)


def test_loss_is_ddpm_epsilon_prediction(ross_model, two_image_batch):
    """L_rec = ||eps_theta(sqrt(a_t) z0 + sqrt(1 - a_t) eps; x, t) - eps||^2, by hand."""
    head = ross_model.recon_head
    cue = torch.randn(2, 16, ross_model.language_model.config.hidden_size)
    with torch.no_grad():
        z0 = encode_latent(head.vae, two_image_batch["recon_pixels"])
        loss = head(cue, None, latent=z0, generator=torch.Generator().manual_seed(3))
        g = torch.Generator().manual_seed(3)
        t = torch.randint(0, 100, (2,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        a = head.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
        side = head.latent_size
        eps_hat = head.denoiser(z_t.flatten(2).transpose(1, 2), align_condition(cue, side), t)
        expected = ((eps_hat - eps.flatten(2).transpose(1, 2)) ** 2).mean()
    torch.testing.assert_close(loss, expected)


def test_condition_pairs_one_token_per_latent_token():
    cue = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    assert align_condition(cue, 2) is cue  # 4 tokens <-> a 2x2 latent: one to one
    grown = align_condition(cue, 4)
    assert grown.shape == (2, 16, 3)
    with pytest.raises(ValueError, match="square grid"):
        align_condition(torch.zeros(1, 5, 3), 4)


def test_ross_trains_a_few_steps_with_a_falling_loss(cache_dir, two_image_batch):
    """Stage II of ROSS on one batch: finite L_rec that falls; the LLM's outputs condition the denoiser."""
    cfg = tiny_config(cache_dir, *ROSS)
    model = vlsa.build_model(cfg).train()
    groups = apply_stage(model, cfg.train.stages[1])
    model.set_loss_weights(0.0, 1.0, pretraining=False)
    optim = torch.optim.AdamW([{"params": g["params"], "lr": g["lr"]} for g in groups])
    losses = []
    for step in range(12):
        torch.manual_seed(step % 2)  # the same two noise draws alternate, so the trend is the model's
        out = model(**two_image_batch)
        optim.zero_grad()
        out.loss.backward()
        optim.step()
        losses.append(out.loss_rec.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) < sum(losses[:4])
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    images = model.reconstruct(two_image_batch["pixel_lo"], two_image_batch["pixel_hi"], two_image_batch["tile_mask"],
                               steps=3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32) and images.min() >= -1 and images.max() <= 1


def test_ross_flops_count_its_denoiser_without_epigone(cache_dir):
    cfg = tiny_config(cache_dir, *ROSS)
    dims = ModelDims.from_config(cfg)
    assert isinstance(dims.denoiser, RossDims) and dims.denoiser.image_tokens == 64
    flops = count(dims, Workload(batch=2, tiles=2, text_tokens=32), trainable={"projector", "llm", "denoiser"})
    parts = flops.by_part()
    assert "epigone" not in parts and parts["denoiser"] > 0
    rd, D = dims.denoiser, dims.llm.width
    per_block = 64 * (D * 32 + 16 * 32 + 12 * 32 * 32) + 32 * 32
    weights = 2.0 * 2 * (2 * per_block + 2 * 32 * 32 + 64 * 32 * 16)
    denoiser = next(p for p in flops.parts if p.name == "denoiser")
    assert denoiser.weights == weights and denoiser.products == 2.0 * 2 * 2 * 2 * 64 * 64 * 32
    assert rd.width == 32


def test_ross_config_errors_name_the_fix(cache_dir):
    with pytest.raises(ValueError, match="conditioning=llm_hidden"):
        tiny_config(cache_dir, "model.recon.head=ross")
    with pytest.raises(ValueError, match="trains epigone"):
        tiny_config(cache_dir, *ROSS[:6])
