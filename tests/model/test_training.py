"""Overfitting one tiny batch: a few seeded optimizer steps lower both L and L_rec."""

from __future__ import annotations

import torch

from vlsa.model.params import apply_stage


def losses(model, batch, seed: int = 123) -> tuple[float, float]:
    """(loss_lm, loss_rec) with the reconstruction noise and timestep fixed by ``seed``."""
    model.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model(**batch)
    return float(out.loss_lm), float(out.loss_rec)


def test_a_few_steps_lower_lm_and_reconstruction_loss(tiny_cfg, fresh_model, two_image_batch):
    torch.manual_seed(0)
    groups = apply_stage(fresh_model, tiny_cfg.train.stages[1])  # everything trainable
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    lm0, rec0 = losses(fresh_model, two_image_batch)
    fresh_model.train()
    for _ in range(12):
        optimizer.zero_grad(set_to_none=True)
        fresh_model(**two_image_batch).loss.backward()
        optimizer.step()
    lm1, rec1 = losses(fresh_model, two_image_batch)
    assert lm1 < 0.5 * lm0, (lm0, lm1)
    assert rec1 < 0.8 * rec0, (rec0, rec1)
