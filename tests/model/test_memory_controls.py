"""Memory controls of the config: load dtype per part, the attention kernel, activation checkpointing per part."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from model_helpers import tiny_config

import vlsa
from vlsa.config import ConfigError, load_config
from vlsa.model.params import apply_stage
from vlsa.train.loop import enable_activation_checkpointing

BF16 = ("model.llm.dtype=bf16", "model.vision.dtype=bf16", "model.recon.denoiser.dtype=bf16",
        "model.recon.vae.dtype=bf16")


def _dtypes(module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def test_parts_load_in_their_dtype_with_the_attention_kernel(cache_dir):
    model = vlsa.build_model(tiny_config(cache_dir, *BF16, "model.attn_implementation=eager"))
    head = model.recon_head
    for part in (model.language_model, model.vision_tower, head.denoiser, head.vae):
        assert _dtypes(part) == {torch.bfloat16}, type(part).__name__
    assert _dtypes(model.projector) == {torch.float32} and _dtypes(head.epigone) == {torch.float32}  # built here
    assert model.language_model.config._attn_implementation == "eager"
    assert model.vision_tower.config._attn_implementation == "eager"

    default = vlsa.build_model(tiny_config(cache_dir))
    assert _dtypes(default) == {torch.float32} and _dtypes(default.recon_head.vae) == {torch.float32}
    assert default.language_model.config._attn_implementation == "sdpa"
    assert default.vision_tower.config._attn_implementation == "sdpa"


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash_attn is installed")
def test_flash_attention_without_its_package_is_a_clear_error(cache_dir):
    cfg = tiny_config(cache_dir, "model.attn_implementation=flash_attention_2")  # loads: workers may have it
    with pytest.raises(ConfigError, match=r"flash_attention_2 needs the `flash_attn` package \(pip install flash-at"):
        vlsa.build_model(cfg)


def test_checkpointing_applies_to_the_named_parts_only(tiny_model):
    model = copy.deepcopy(tiny_model)
    enable_activation_checkpointing(model, ["llm", "denoiser"])
    assert model.language_model.is_activation_checkpointing
    assert not model.vision_tower.is_activation_checkpointing
    assert model.recon_head.denoiser.gradient_checkpointing
    other = copy.deepcopy(tiny_model)
    enable_activation_checkpointing(other, ["vision"])
    assert other.vision_tower.is_activation_checkpointing and not other.language_model.is_activation_checkpointing
    assert not other.recon_head.denoiser.gradient_checkpointing


def loss_and_grads(tiny_model, stage, parts, batch):
    """One seeded forward and backward of a copy of ``tiny_model`` set up for ``stage``, with ``parts``
    recomputed: the loss, the gradients by parameter name, and the model."""
    model = copy.deepcopy(tiny_model).train()
    apply_stage(model, stage)
    enable_activation_checkpointing(model, parts)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        out = model(**batch)
    out.loss.backward()
    return out.loss, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, model


def assert_same_loss_and_grads(plain, recomputed) -> None:
    (loss0, grads0, _), (loss1, grads1, _) = plain, recomputed
    torch.testing.assert_close(loss1, loss0)
    assert grads0.keys() == grads1.keys()
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_keeps_the_loss_and_gradients(tiny_model, two_image_batch):
    stage = load_config("tiny").train.stages[1]
    assert_same_loss_and_grads(loss_and_grads(tiny_model, stage, [], two_image_batch),
                               loss_and_grads(tiny_model, stage, ["llm", "vision", "denoiser"], two_image_batch))


def test_checkpointing_a_frozen_llm_keeps_its_embedding_matrix_out_of_the_backward(tiny_model, two_image_batch):
    """LLM frozen as in Stage I: the gradients reach the projector through the LLM, never the embedding module
    (whose output does not require grad: ZeRO-3 would gather the whole matrix again in the backward pass)."""
    stage = load_config("tiny", ["train.stages.0.lr={projector: 1.0e-3, denoiser: 1.0e-3}"]).train.stages[0]
    plain = loss_and_grads(tiny_model, stage, [], two_image_batch)
    assert any(n.startswith("projector.") for n in plain[1])
    recomputed = loss_and_grads(tiny_model, stage, ["llm"], two_image_batch)
    assert_same_loss_and_grads(plain, recomputed)
    assert not recomputed[2].language_model.get_input_embeddings()(two_image_batch["input_ids"]).requires_grad
