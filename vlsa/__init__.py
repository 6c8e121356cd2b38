"""VLSA: perception and cognition alignment for multimodal LLMs, as a plug-in.

``import vlsa`` is light: it loads the config schema only. Model classes are imported on first use,
and nothing here imports Ray or DeepSpeed (the ``ray_jobs/`` entry points do).
"""

from __future__ import annotations

import importlib
from typing import Any

from vlsa.config import Config, ConfigError, load_config

__version__ = "0.1.0"

_LAZY = {
    "build_model": "vlsa.model.builder",
    "build_inference_model": "vlsa.model.builder",
    "build_tokenizer": "vlsa.model.tokenizer",
    "SAPerceiver": "vlsa.model.perceiver",
    "Epigone": "vlsa.model.epigone",
    "ReconstructionHead": "vlsa.model.reconstruction",
    "VLSAModel": "vlsa.model.vlm",
    "CompressiveEncoder": "vlsa.model.encoding",
    "export_inference_model": "vlsa.model.export",
    "load_inference_model": "vlsa.model.export",
    "build_projector": "vlsa.model.projectors",
    "apply_stage": "vlsa.model.params",
}

__all__ = ["Config", "ConfigError", "load_config", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlsa' has no attribute {name!r}")
