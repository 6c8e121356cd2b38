"""Shared inputs of the evaluation tests: one tiny model, its export and a small demo held-out split."""

from __future__ import annotations

import pytest

import vlsa
from vlsa.config import DemoConfig
from vlsa.data.demo import generate_demo
from vlsa.model.export import export_inference_model

DEMO_EVAL_IMAGES = 4  # 3 questions each


def tiny_config(cache_dir: str, *overrides: str):
    """The tiny preset with its components cached under ``cache_dir``."""
    return vlsa.load_config("tiny", [f"model.cache_dir={cache_dir}", *overrides])


@pytest.fixture(scope="session")
def tiny_model(cache_dir):
    """The tiny VLSA model with its reconstruction head (random weights, seeded)."""
    return vlsa.build_model(tiny_config(cache_dir)).eval()


@pytest.fixture(scope="session")
def exported_model(tiny_model, tmp_path_factory) -> str:
    """The tiny model exported for inference (vision tower, projector, LLM, tokenizer)."""
    return str(export_inference_model(tiny_model, str(tmp_path_factory.mktemp("export") / "tiny-vlsa")))


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A small generated demo dataset (its ``eval`` file is the held-out question file)."""
    return generate_demo(DemoConfig(train_images=2, eval_images=DEMO_EVAL_IMAGES), tmp_path_factory.mktemp("demo"))
