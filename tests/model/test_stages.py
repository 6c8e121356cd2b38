"""Per-stage freezing (Tab. 7): which modules get gradients, and the optimizer groups' learning rates."""

from __future__ import annotations

import torch

import vlsa
from vlsa.model.params import apply_stage, stage_modules


def grads_by_module(model, batch) -> dict[str, bool]:
    """Whether any parameter of each stage module received a non-zero gradient."""
    model.zero_grad(set_to_none=True)
    model.train()
    model(**batch).loss.backward()
    return {
        name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
        for name, module in stage_modules(model).items()
    }


def test_stage1_trains_perceiver_epigone_denoiser_only(fresh_model, two_image_batch):
    stage1 = vlsa.load_config("llava_next_llama3_8b").train.stages[0]  # Tab. 7 (tiny also trains its random LLM)
    apply_stage(fresh_model, stage1)
    got = grads_by_module(fresh_model, two_image_batch)
    assert got == {"vision": False, "projector": True, "llm": False, "epigone": True, "denoiser": True}
    assert all(p.grad is None for p in fresh_model.recon_head.vae.parameters())
    assert not any(p.requires_grad for p in fresh_model.language_model.parameters())


def test_stage2_trains_everything_but_the_vae(tiny_cfg, fresh_model, two_image_batch):
    apply_stage(fresh_model, tiny_cfg.train.stages[1])
    got = grads_by_module(fresh_model, two_image_batch)
    assert got == dict.fromkeys(["vision", "projector", "llm", "epigone", "denoiser"], True)
    assert not any(p.requires_grad for p in fresh_model.recon_head.vae.parameters())


def test_param_groups_carry_table7_learning_rates(fresh_model):
    paper = vlsa.load_config("llava_next_llama3_8b").train.stages
    expected = [
        {"projector": 1e-3, "epigone": 1e-3, "denoiser": 1e-3},
        {"projector": 1e-5, "epigone": 1e-5, "denoiser": 1e-5, "vision": 2e-6, "llm": 1e-5},
    ]
    for stage, lrs in zip(paper, expected):
        groups = apply_stage(fresh_model, stage)
        optimizer = torch.optim.AdamW(groups)
        assert {g["name"]: g["lr"] for g in optimizer.param_groups} == lrs
        in_groups = [id(p) for g in groups for p in g["params"]]
        trainable = [id(p) for p in fresh_model.parameters() if p.requires_grad]
        assert len(in_groups) == len(set(in_groups)) and set(in_groups) == set(trainable)
        vae = {id(p) for p in fresh_model.recon_head.vae.parameters()}
        assert not vae & set(in_groups)


def test_loss_weights_follow_the_stage(tiny_cfg, fresh_model, two_image_batch):
    fresh_model.train()
    torch.manual_seed(0)
    base = fresh_model(**two_image_batch)
    stage = tiny_cfg.train.stages[0]
    stage.w_lm, stage.w_rec = 0.5, 3.0
    apply_stage(fresh_model, stage)
    torch.manual_seed(0)
    out = fresh_model(**two_image_batch)
    torch.testing.assert_close(out.loss, 0.5 * base.loss_lm + 3.0 * base.loss_rec)
