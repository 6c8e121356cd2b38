"""This package's own model (``VLSAModel``) rebuilt from a transformers export folder (``llava``, ``llava_next``,
``vlsa``), so the chat CLI, batch inference and the lmms-eval adapter answer with the exported weights.

transformers loads the folder (``AutoModelForImageTextToText``; the VLSA classes are registered by
``vlsa.model.hf``); its vision tower and decoder are taken over as they are, the LM head and decoder are put back
into the LLM's own ``*ForCausalLM`` class (built on the meta device, so nothing is allocated twice), and the
projector's tensors are mapped back by name. ``vlsa_export.json`` gives the model section of the run's config.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlsa.config import Config, config_from_dict
from vlsa.model import hf  # noqa: F401  (registers model type "vlsa" with the Auto classes)
from vlsa.model.export_hf import INFO_NAME
from vlsa.model.geometry import num_patches
from vlsa.model.projectors import build_projector
from vlsa.model.vlm import VLSAModel


def inference_config(model_section: dict) -> Config:
    """A valid run config around an inference model section (one empty stage: nothing trains)."""
    return config_from_dict({"model": model_section, "train": {"stages": [{"name": "inference", "lr": {}}]}})


def _causal_lm(decoder, head, text_config, generation_config):
    """The LLM's ``*ForCausalLM`` holding ``decoder`` and ``head`` (built on meta: no second copy of the weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(text_config)
    setattr(llm, llm.base_model_prefix, decoder)
    llm.lm_head = head
    if generation_config is not None:
        llm.generation_config = generation_config
    return llm


def _projector_state(hf_model, fmt: str) -> dict[str, torch.Tensor]:
    """The export's projector tensors under this package's names (the inverse of ``export_hf.projector_state``)."""
    own = hf_model.model.multi_modal_projector.state_dict()
    if fmt == "vlsa":
        return {f"perceiver.{k}": v for k, v in own.items()}
    names = {"linear_1": "mlp.0", "linear_2": "mlp.2"}
    state = {f"{names[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in own.items()}
    if fmt == "llava_next":
        state["image_newline"] = hf_model.model.image_newline.data
    return state


def load_transformers_folder(root: Path) -> VLSAModel:
    """A ``VLSAModel`` (no training-only heads) from a transformers export folder."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer, GenerationConfig

    info = json.loads((root / INFO_NAME).read_text())
    cfg = inference_config(info["model"])
    hf_model = AutoModelForImageTextToText.from_pretrained(str(root)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(root))
    generation = GenerationConfig.from_pretrained(str(root)) if (root / "generation_config.json").is_file() else None
    inner = hf_model.model
    llm = _causal_lm(inner.language_model, hf_model.lm_head, hf_model.config.text_config, generation)
    vision = inner.vision_tower
    d, D = vision.config.hidden_size, llm.get_input_embeddings().embedding_dim
    projector = build_projector(cfg.model.projector, d, D, num_patches=num_patches(vision.config.image_size,
                                vision.config.patch_size), image_size=vision.config.image_size,
                                grids=cfg.model.encoding.anyres_grids)
    projector.load_state_dict(_projector_state(hf_model, info["format"]))
    return VLSAModel(cfg.model, vision, projector.to(vision.dtype), llm, tokenizer).eval()
