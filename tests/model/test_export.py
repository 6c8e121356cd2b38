"""The inference-only export, in the VLSA transformers format (the default for the SA-Perceiver) and this package's
own layout, read back by ``load_inference_model``: no auxiliary modules, same LLM logits, generate() on an image."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel, VQModel
from model_helpers import solid

from vlsa.model.epigone import Epigone
from vlsa.model.export import export_format, export_inference_model, load_inference_model


WEIGHT_FILES = {"vlsa": ["model.safetensors"],
                "package": ["model.safetensors", "model.safetensors", "projector.safetensors"]}


@pytest.fixture(scope="module", params=sorted(WEIGHT_FILES))
def exported(request, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "vlsa-tiny"
    export_inference_model(tiny_model, str(out), format=request.param)
    return out, load_inference_model(str(out), cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_export_has_no_auxiliary_modules(exported):
    out, model = exported
    assert model.recon_head is None
    aux = (AutoencoderKL, SD3Transformer2DModel, VQModel, Epigone)
    assert not [type(m).__name__ for m in model.modules() if isinstance(m, aux)]
    weights = sorted(p.name for p in out.rglob("*") if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt"})
    assert weights == WEIGHT_FILES[export_format(out)]
    assert not model.config.recon.enabled


def test_same_logits_as_the_full_model(tiny_model, exported, two_image_batch):
    _, model = exported
    batch = {k: v for k, v in two_image_batch.items() if k != "recon_pixels"}
    with torch.no_grad():
        full = tiny_model(**batch)
        small = model(**batch)
    torch.testing.assert_close(small.logits, full.logits)
    torch.testing.assert_close(small.loss_lm, full.loss_lm)
    assert small.loss_rec is None


def test_generate_on_an_image_and_a_prompt(tiny_model, exported):
    _, model = exported
    image = solid(451, 300)
    answer = model.answer(image, "What color is the shape?", max_new_tokens=6)
    assert isinstance(answer, str)
    assert answer == tiny_model.answer(image, "What color is the shape?", max_new_tokens=6)
    tok = model.tokenizer(["<image>\nWhat shape?", "<image>\nWhat color is it?"], padding=True, return_tensors="pt")
    lo, hi = model.encoder()(image)
    new = model.generate(tok.input_ids, tok.attention_mask, torch.tensor([1, 1]), torch.stack([lo, lo]),
                         torch.stack([hi, hi]), max_new_tokens=4)
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 4
    # left padding of the shorter prompt must not change its greedy answer
    alone = model.generate(tok.input_ids[:1, tok.attention_mask[0].bool()], None, torch.tensor([1]), lo[None], hi[None],
                           max_new_tokens=4)
    assert new[0, : alone.shape[1]].tolist() == alone[0].tolist()
