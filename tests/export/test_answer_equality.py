"""Greedy answers of every export kind, loaded with plain transformers, equal the project's own model's, token for
token; the VLSA export also with remote code in a process that cannot import ``vlsa``, and batched over mixed sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from export_helpers import PROMPTS, ours
from transformers import AutoModelForImageTextToText, AutoProcessor

import vlsa.model.hf  # noqa: F401  (registers "vlsa" with the Auto classes: loads without remote code)

NEW_TOKENS = 6
CLASSES = {"vlsa": "VlsaForConditionalGeneration", "llava": "LlavaForConditionalGeneration",
           "llava_next": "LlavaNextForConditionalGeneration"}


def transformers_answers(folder, images, prompts, **load) -> list[list[int]]:
    """Greedy answer ids of an export folder, one prompt at a time, through its own processor."""
    model = AutoModelForImageTextToText.from_pretrained(str(folder), **load).eval()
    processor = AutoProcessor.from_pretrained(str(folder), **load)
    answers = []
    for image, prompt in zip(images, prompts):
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
        answers.append(out[0, inputs["input_ids"].shape[1]:].tolist())
    return answers


@pytest.mark.parametrize("kind", ["vlsa", "llava", "llava_next"])
def test_transformers_answers_equal_the_projects(kind, trained, images):


    run = trained(kind)
    assert run.summary["format"] == kind
    model, info = AutoModelForImageTextToText.from_pretrained(str(run.out), output_loading_info=True)
    assert type(model).__name__ == CLASSES[kind]
    assert not any(info.values()), info  # every tensor in the folder, none missing, none left over
    expected = [ours(run.model, im, p, NEW_TOKENS) for im, p in zip(images, PROMPTS)]
    assert transformers_answers(run.out, images, PROMPTS) == expected


def test_the_vlsa_folder_loads_with_remote_code_without_the_package(trained, images, tmp_path):


    run = trained("vlsa")
    paths = []
    for n, image in enumerate(images):
        paths.append(str(tmp_path / f"{n}.png"))
        image.save(paths[-1])
    script = f"""
import json, sys, torch
sys.modules["vlsa"] = None  # any import of the package fails
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
folder, paths, prompts = {str(run.out)!r}, {paths!r}, {PROMPTS!r}
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
out = []
for path, prompt in zip(paths, prompts):
    inputs = processor(images=[Image.open(path).convert("RGB")], text=[prompt], return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens={NEW_TOKENS}, min_new_tokens={NEW_TOKENS}, do_sample=False)
    out.append(ids[0, inputs["input_ids"].shape[1]:].tolist())
print(json.dumps({{"module": type(model).__module__, "answers": out}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_MODULES_CACHE": str(tmp_path / "modules"),
                                                                       "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["module"].startswith("transformers_modules")  # the folder's own code, not this package's
    assert got["answers"] == [ours(run.model, im, p, NEW_TOKENS) for im, p in zip(images, PROMPTS)]


def test_the_vlsa_folder_generates_for_a_batch_of_mixed_image_sizes(trained, images):
    run = trained("vlsa")
    model = AutoModelForImageTextToText.from_pretrained(str(run.out)).eval()
    assert type(model).__module__ == "vlsa.model.hf.modeling_vlsa"  # registered classes: no remote code
    processor = AutoProcessor.from_pretrained(str(run.out))
    batch = processor(images=images, text=PROMPTS, padding=True, return_tensors="pt")
    assert batch["tile_mask"].sum(1).tolist() == [run.model.encoder().num_tiles(im.width, im.height) for im in images]
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    together = out[:, batch["input_ids"].shape[1]:].tolist()
    assert together == transformers_answers(run.out, images, PROMPTS)  # left padding changes no answer


@pytest.mark.parametrize("kind", ["vlsa", "llava", "llava_next"])
def test_the_folders_processor_gives_the_training_pixels(kind, trained, images):
    run = trained(kind)
    processor = AutoProcessor.from_pretrained(str(run.out))
    encoder = run.model.encoder()
    for image in images:
        lo, hi = encoder(image)
        got = processor(images=[image], text=["<image>"], return_tensors="pt")
        if kind == "vlsa":
            views = got["pixel_values"][0], got["pixel_values_hi"][0]
        elif kind == "llava":
            views = got["pixel_values"][0], got["pixel_values"][:1]
        else:  # LLaVA-NeXT stacks the base view before the tiles
            views = got["pixel_values"][0, 0], got["pixel_values"][0, 1:1 + hi.shape[0]]
        torch.testing.assert_close(views[0], lo, rtol=0, atol=1e-6)
        torch.testing.assert_close(views[1], hi, rtol=0, atol=1e-6)
        placeholders = int((got["input_ids"] == run.model.image_token_id).sum())
        assert placeholders == run.model.visual_tokens(image.height, image.width, hi.shape[0])


@pytest.mark.parametrize("kind", ["vlsa", "llava", "llava_next"])
def test_the_folders_logits_equal_the_projects(kind, trained, images):
    run = trained(kind)
    model = AutoModelForImageTextToText.from_pretrained(str(run.out)).eval()
    processor = AutoProcessor.from_pretrained(str(run.out))
    image, prompt = images[0], PROMPTS[0]
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    lo, hi = run.model.encoder()(image)
    ids = run.model.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        theirs = model(**inputs).logits[0, -1]
        spliced, _ = run.model.prepare_inputs(ids, torch.ones_like(ids), torch.ones(1, dtype=torch.long), lo[None],
                                              hi[None], image_sizes=torch.tensor([[image.height, image.width]]))
        mine = run.model.language_model(inputs_embeds=spliced.inputs_embeds,
                                        attention_mask=spliced.attention_mask).logits[0, -1]
    torch.testing.assert_close(theirs, mine, rtol=1e-4, atol=1e-4)
