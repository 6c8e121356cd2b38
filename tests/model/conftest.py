"""One tiny model per test session (the tiny preset through the real loaders) and shared batches."""

from __future__ import annotations

import copy

import pytest
import torch
from model_helpers import make_batch, solid, tiny_config

import vlsa


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops are far slower with several OpenMP threads on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_cfg(cache_dir):
    """The run config the shared model is built from (the model keeps only its ``model`` section)."""
    return tiny_config(cache_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
    """The shared tiny VLSA model; tests that change it work on ``copy.deepcopy``."""
    return vlsa.build_model(tiny_cfg).eval()


@pytest.fixture
def fresh_model(tiny_model):
    """A private copy of the shared model, free to train or freeze."""
    return copy.deepcopy(tiny_model)


@pytest.fixture
def two_image_batch(tiny_model):
    """Two samples with non-square images of different tile counts."""
    images = [solid(451, 300), solid(60, 20, (20, 160, 40))]
    texts = ["<image>\nWhat color is the shape? red", "<image>\nWhat shape is shown? a green square"]
    return make_batch(tiny_model, images, texts)
