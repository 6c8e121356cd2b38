"""Shared inputs of the export tests: the three model kinds as tiny training checkpoints, and their exports.

Each kind is the tiny preset (reconstruction head included, as trained) with its projector switched: ``vlsa``
(SA-Perceiver), ``llava`` (mlp2x_gelu over LLaVA-1.5's square padding, one tile) and ``llava_next`` (anyres). Its
weights are moved off the seeded build (so only weights read from the checkpoint reproduce it), its full state dict
is written as a stage-end checkpoint (``model.safetensors``, what training writes) and exported with the command
line, as a team would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import IMAGES, overrides, two_colour
from PIL import Image

import vlsa
from vlsa.export.__main__ import main as export_main
from vlsa.model import weights
from vlsa.train.checkpoint import TRAINER_STATE, WEIGHTS
from tests.threads import one_thread  # noqa: F401  (autouse: one OpenMP thread per module)


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    colours = [(200, 30, 30), (20, 160, 40), (10, 10, 200)]
    return [two_colour(w, h, c) for (w, h), c in zip(IMAGES, colours)]


class Trained:
    """One kind: its full training model, its checkpoint folder and its exported folder."""

    def __init__(self, kind: str, cache_dir: str, root: Path) -> None:
        self.kind = kind
        self.cfg = vlsa.load_config("tiny", overrides(kind, cache_dir))
        self.model = vlsa.build_model(self.cfg).eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # "trained": away from what a fresh build gives
            torch.manual_seed(1)
            for param in self.model.parameters():
                param.add_(torch.randn_like(param) * 0.02)
        self.checkpoint = root / "run" / "01_stage2_step00000012"
        self.checkpoint.mkdir(parents=True)
        weights.save(self.model.state_dict(), self.checkpoint / WEIGHTS)
        (self.checkpoint / TRAINER_STATE).write_text(json.dumps({"stage": "stage2", "step": 12}))
        self.out = root / f"export-{kind}"
        self.summary = export_main(["--checkpoint", str(self.checkpoint), "--out", str(self.out),
                                    *overrides(kind, cache_dir)])


@pytest.fixture(scope="session")
def trained(cache_dir, tmp_path_factory):
    """``kind -> Trained``, built on first use."""
    made: dict[str, Trained] = {}

    def get(kind: str) -> Trained:
        if kind not in made:
            made[kind] = Trained(kind, cache_dir, tmp_path_factory.mktemp(kind))
        return made[kind]

    return get
