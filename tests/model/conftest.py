"""One tiny model per test session (the tiny preset through the real loaders) and shared batches."""

from __future__ import annotations

import copy

import pytest
from model_helpers import make_batch, solid, tiny_config

import vlsa
from tests.threads import one_thread  # noqa: F401  (autouse: one OpenMP thread per module)


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
