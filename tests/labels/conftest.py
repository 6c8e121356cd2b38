"""Fixtures of the labeling tests: the tiny config and its frozen VQ-VAE and VAE, built once."""

from __future__ import annotations

import pytest
from label_helpers import label_config

from vlsa.labels.compute import LabelComputer
from vlsa.model.builder import build_vae, build_vq


@pytest.fixture(scope="session")
def label_cfg(cache_dir):
    return label_config(cache_dir)


@pytest.fixture(scope="session")
def frozen_models(label_cfg):
    """(VQModel, AutoencoderKL) of the tiny preset, as the labeling actors load them."""
    return build_vq(label_cfg), build_vae(label_cfg)


@pytest.fixture(scope="session")
def label_computer(label_cfg, frozen_models):
    """The in-process label computation on the CPU (after ``frozen_models`` has filled the cache)."""
    return LabelComputer(label_cfg, device="cpu")
