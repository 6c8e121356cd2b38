"""Fixtures of the data tests: the tiny config, its tokenizer, a small demo dataset, label rows."""

from __future__ import annotations

import pytest

from vlsa import load_config
from vlsa.config import DemoConfig
from vlsa.data.demo import generate_demo
from vlsa.model.tokenizer import build_tokenizer


@pytest.fixture(scope="session")
def tiny_cfg(cache_dir):
    return load_config("tiny", [f"model.cache_dir={cache_dir}"])


@pytest.fixture(scope="session")
def tokenizer(tiny_cfg, cache_dir):
    return build_tokenizer(tiny_cfg.model.tokenizer, cache_dir)


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A small generated demo dataset (24 training images, 12 held-out)."""
    return generate_demo(DemoConfig(train_images=24, eval_images=12), tmp_path_factory.mktemp("demo"), seed=3)
