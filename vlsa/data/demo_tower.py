"""The demo's pretrained vision tower: the tiny tower trained contrastively on drawn scenes and their captions.

Every LLaVA-style run starts from a vision tower pretrained on image-text pairs (CLIP, SigLIP); the
``tiny`` preset's tower starts random. From a random tower the 2-layer LLM learned colour and count
but not shape within the demo's budget, although the tower alone, trained on shape labels, reads shape
in seconds (README, "Shape, count and position"). So before the stages run, the demo trains the tower
the way such towers are trained, contrastively against captions, on freshly drawn scenes (never the
held-out ones), saves it with ``save_pretrained`` and points ``model.vision.path`` at it: the stages
then load it exactly as they load a pretrained CLIP.

Image side: the mean of the patch tokens of the layer the projector reads (``model.vision.select_layer``),
so that those tokens, not only a pooled summary, carry what the captions name (shape, colour, count and
place). Text side: a small ``CLIPTextModel`` over the run's tokenizer. Scenes repeat, so equal captions
count as positives of each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlsa.config import Config
from vlsa.data.demo import DRAWING, caption, draw_scene, random_scene
from vlsa.model.builder import build_model_tokenizer, build_vision
from vlsa.model.encoding import lowres_rgb, normalise, vision_norm

_TEXT_LAYERS = 2
_THREADS = 1
"""Torch threads of the pretraining. Its matrices are tiny: on the 2-core machine, with anything else
running, 10 steps took 0.4 s on one thread and 25 s on two (OpenMP threads spin waiting for each other)."""
_LOGIT_SCALE = float(np.log(1 / 0.07))
"""CLIP's initial temperature."""


def tower_dir(cfg: Config, root: Path) -> Path:
    """Where the pretrained tower of ``cfg`` is saved: named by everything it depends on."""
    vision = cfg.model.vision
    depends = {"vision": {"kind": vision.kind, "init": vision.init, "select_layer": vision.select_layer},
               "seed": cfg.model.seed, "train_seed": cfg.train.seed, "tokenizer": asdict(cfg.model.tokenizer),
               "sides": [cfg.demo.min_side, cfg.demo.max_side], "tower": asdict(cfg.demo.tower), "drawing": DRAWING}
    key = hashlib.sha256(json.dumps(depends, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return root / "towers" / f"{vision.kind}-{key}"


def _say(message: str) -> None:
    print(message, flush=True)


def pretrained_tower(cfg: Config, root: Path, log=_say) -> str:
    """The folder of the demo's pretrained tower (trained and saved the first time); "" when ``cfg``
    keeps the random tower (``demo.tower.epochs=0``) or loads its tower from ``model.vision.path``."""
    if cfg.model.vision.path or cfg.demo.tower.epochs == 0:
        return ""
    target = tower_dir(cfg, root)
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with _torch_threads(_THREADS):
            tower = train_tower(cfg, log)
        tower.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


@contextmanager
def _torch_threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_tower(cfg: Config, log=_say) -> nn.Module:
    """The tiny tower of ``cfg`` after ``demo.tower.epochs`` of contrastive training (returned in eval mode)."""
    tower = cfg.demo.tower
    generator = torch.Generator().manual_seed(cfg.train.seed)
    pixels, ids, mask, vocab = _scenes(cfg)
    vision = build_vision(cfg).float().train()
    vision.requires_grad_(True)
    model = _Contrastive(vision, cfg, vocab=vocab, max_length=ids.shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=tower.lr)
    steps = len(pixels) // tower.batch
    started = time.perf_counter()
    for epoch in range(tower.epochs):
        order = torch.randperm(len(pixels), generator=generator)
        losses = []
        for step in range(steps):
            batch = order[step * tower.batch:(step + 1) * tower.batch]
            loss = model(pixels[batch], ids[batch], mask[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        elapsed = time.perf_counter() - started
        left = elapsed / (epoch + 1) * (tower.epochs - epoch - 1)
        log(f"vision tower pretraining: epoch {epoch + 1}/{tower.epochs}, contrastive loss {np.mean(losses):.3f}, "
            f"{elapsed:.0f} s, ETA {left:.0f} s")
    return vision.eval()


def _scenes(cfg: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(X_Lo pixels (N, 3, s, s), caption ids (N, T), attention mask (N, T), vocabulary size) of freshly
    drawn scenes."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.train.seed, 11]))  # not the data set's scenes
    size = _image_size(cfg)
    mean, std = vision_norm(cfg.model.vision.kind)
    scenes = [random_scene(rng, cfg.demo) for _ in range(cfg.demo.tower.images)]
    pixels = torch.stack([normalise(lowres_rgb(draw_scene(s, rng), size), mean, std) for s in scenes])
    tokenizer = build_model_tokenizer(cfg)
    text = tokenizer([caption(s, rng) for s in scenes], padding="longest", return_tensors="pt")
    return pixels, text["input_ids"], text["attention_mask"], len(tokenizer)


def _image_size(cfg: Config) -> int:
    size = cfg.model.vision.init.get("image_size")
    if not size:
        raise ValueError("demo tower pretraining needs model.vision.init's image_size")
    return int(size)


class _Contrastive(nn.Module):
    """CLIP's symmetric contrastive loss between a vision tower's pooled patch tokens and a text tower."""

    def __init__(self, vision: nn.Module, cfg: Config, vocab: int, max_length: int) -> None:
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        width, heads = vision.config.hidden_size, vision.config.num_attention_heads
        self.vision, self.select_layer = vision, cfg.model.vision.select_layer
        self.patches = (vision.config.image_size // vision.config.patch_size) ** 2
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.model.seed)
            self.text = CLIPTextModel(CLIPTextConfig(
                vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=_TEXT_LAYERS,
                num_attention_heads=heads, max_position_embeddings=max_length, pad_token_id=0, bos_token_id=0,
                eos_token_id=0))  # ids unused: the loss reads the last real token, not the pooler
            self.image_proj, self.text_proj = nn.Linear(width, width, bias=False), nn.Linear(width, width, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(_LOGIT_SCALE))

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.vision(pixels, output_hidden_states=True).hidden_states[self.select_layer]
        image = F.normalize(self.image_proj(hidden[:, -self.patches:].mean(dim=1)), dim=-1)
        # the caption's last token has seen all of it (causal text attention)
        last = self.text(input_ids=ids, attention_mask=mask).last_hidden_state[torch.arange(len(ids)), mask.sum(1) - 1]
        text = F.normalize(self.text_proj(last), dim=-1)
        logits = image @ text.T * self.logit_scale.exp()
        same = (ids[:, None] == ids[None]).all(dim=-1).float()  # equal captions are positives of each other
        target = same / same.sum(dim=1, keepdim=True)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
