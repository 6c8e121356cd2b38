"""Export folders that transformers loads with its own classes (and so vLLM and lmms-eval's ``llava_hf``), and
the VLSA folder that loads with ``AutoModelForImageTextToText``.

- ``llava``: an ``mlp2x_gelu`` model with LLaVA-1.5's square-padded view -> ``LlavaForConditionalGeneration`` with
  a ``LlavaProcessor`` whose image processor pads to a square with the mean colour, resizes the shortest edge to
  the encoder side (bicubic) and centre-crops: the training view, pixel for pixel.
- ``llava_next``: an ``anyres`` model -> ``LlavaNextForConditionalGeneration`` with a ``LlavaNextProcessor``
  (``image_grid_pinpoints`` = ``model.encoding.anyres_grids`` in pixels): the same tiling, base view, unpadding and
  newline tokens as ``vlsa.model.anyres``.
- ``vlsa``: the SA-Perceiver -> ``VlsaForConditionalGeneration`` (``vlsa.model.hf``, its code copied into the
  folder with ``auto_map`` entries) and a ``VlsaProcessor`` that does the compressive encoding.

Where transformers cannot match the training view the export refuses rather than write a folder that sees other
pixels: LLaVA's processor cannot pad bottom/right to a tile canvas, so an ``mlp2x_gelu`` model trained on the
compressive encoding's canvas view (``lowres_view: canvas``) has no ``llava`` folder. transformers 5 picks the
torchvision backend of an image processor when torchvision is installed; its bicubic resize is not PIL's, so the
folders are written with the PIL backend classes and consumers should load them with ``backend="pil"``.

Weights are written by name, from the parts' state dicts (sharded safetensors, nothing instantiated twice), in the
layout of transformers 5 (``model.vision_tower``, ``model.multi_modal_projector``, ``model.language_model``,
``lm_head``). ``vlsa_export.json`` records the model section of the run's config, so that this package can rebuild
its own model from the folder (``vlsa.model.export_load``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from vlsa import tokens
from vlsa.config import ConfigError, ModelConfig
from vlsa.model import hf
from vlsa.model.anyres import pinpoints
from vlsa.model.encoding import vision_norm

INFO_NAME = "vlsa_export.json"
FORMATS = ("llava", "llava_next", "vlsa")


def resolve_format(model_cfg: ModelConfig, requested: str = "auto") -> str:
    """The folder format of a model: ``requested``, checked, or for ``auto`` the one its projector has
    (``package``, this package's own layout, for projectors transformers has no class for)."""
    projector, view = model_cfg.projector.type, model_cfg.encoding.lowres_view
    natural = {"mlp2x_gelu": "llava" if view == "square_pad" else "package", "anyres": "llava_next",
               "sa_perceiver": "vlsa"}.get(projector, "package")
    if requested == "auto":
        return natural
    if requested not in (*FORMATS, "package"):
        raise ConfigError(f"export format {requested!r} is unknown; choose auto, {', '.join(FORMATS)} or package")
    if requested != natural and requested != "package":
        why = (" (LLaVA's processor cannot pad bottom/right to the compressive encoding's tile canvas: train with "
               "model.encoding.lowres_view=square_pad, or export as package)") if projector == "mlp2x_gelu" else ""
        raise ConfigError(f"a {projector!r} model with lowres_view={view!r} cannot be exported as {requested!r}; "
                          f"its format is {natural!r}{why}")
    return requested


# ------------------------------------------------------------------------------------------ weights


def transformers_state(model) -> dict[str, torch.Tensor]:
    """The vision tower's and LLM's tensors under transformers 5's LLaVA names (the projector's: per format)."""
    state = {f"model.vision_tower.{k}": v for k, v in model.vision_tower.state_dict().items()}
    llm = model.language_model
    prefix = f"{llm.base_model_prefix}."
    for key, value in llm.state_dict().items():
        state[f"model.language_model.{key[len(prefix):]}" if key.startswith(prefix) else key] = value
    return state


def projector_state(model, fmt: str) -> dict[str, torch.Tensor]:
    """The projector's tensors under the format's names."""
    own = model.projector.state_dict()
    if fmt == "vlsa":
        return {f"model.multi_modal_projector.{k.removeprefix('perceiver.')}": v for k, v in own.items()}
    names = {"mlp.0.weight": "linear_1.weight", "mlp.0.bias": "linear_1.bias",
             "mlp.2.weight": "linear_2.weight", "mlp.2.bias": "linear_2.bias"}
    state = {f"model.multi_modal_projector.{names[k]}": v for k, v in own.items() if k in names}
    if fmt == "llava_next":
        state["model.image_newline"] = own["image_newline"]
    return state


def _write_weights(state: dict[str, torch.Tensor], folder: Path) -> None:
    from huggingface_hub import save_torch_state_dict

    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_torch_state_dict(state, folder, max_shard_size="5GB")


# ------------------------------------------------------------------------------------------ configs


def _common(model) -> dict[str, Any]:
    vision, llm = model.vision_tower.config.to_dict(), model.language_model.config.to_dict()
    for sub in (vision, llm):
        sub.pop("architectures", None)
    return {"vision_config": vision, "text_config": llm, "image_token_id": model.image_token_id,
            "vision_feature_layer": model.config.vision.select_layer,
            "tie_word_embeddings": bool(model.language_model.config.tie_word_embeddings)}


def _select_strategy(model) -> str:
    """LLaVA's name for dropping CLIP's class token (``default``) or keeping every token (``full``, SigLIP)."""
    return "default" if model.config.vision.kind == "clip" else "full"


def hf_config(model, fmt: str):
    """The transformers config of the export."""
    from transformers import LlavaConfig, LlavaNextConfig

    common, l = _common(model), model.num_patches
    if fmt == "vlsa":
        p = model.config.projector
        config = hf.VlsaConfig(**common, image_seq_length=l, perceiver_heads=p.heads,
                               perceiver_self_attention=p.self_attention, perceiver_full_projections=p.full_projections,
                               perceiver_global_embedding=p.global_embedding)
        config.auto_map = dict(hf.AUTO_MAP)
        config.architectures = ["VlsaForConditionalGeneration"]
        return config
    common["image_token_index"] = common.pop("image_token_id")
    llava = dict(common, projector_hidden_act="gelu", vision_feature_select_strategy=_select_strategy(model))
    if fmt == "llava":
        config = LlavaConfig(**llava, image_seq_length=l)
    else:
        config = LlavaNextConfig(**llava, image_grid_pinpoints=_pinpoints(model))
    config.architectures = [f"{type(config).__name__.removesuffix('Config')}ForConditionalGeneration"]
    return config


def _pinpoints(model) -> list[list[int]]:
    return [list(p) for p in pinpoints(model.config.encoding.anyres_grids, model.image_size)]


# ------------------------------------------------------------------------------------------ processors


def hf_processor(model, fmt: str, chat_template: str = ""):
    """The processor whose pixels are the training pipeline's (PIL backend; see the module doc); ``chat_template``:
    the Jinja template its ``apply_chat_template`` renders prompts with (none when empty)."""
    from transformers import LlavaNextProcessor, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    s, kind = model.image_size, model.config.vision.kind
    mean, std = (list(v) for v in vision_norm(kind))
    if fmt == "vlsa":
        images = hf.VlsaImageProcessor(image_size=s, max_tiles=model.config.encoding.max_tiles,
                                       lowres_view=model.config.encoding.lowres_view, image_mean=mean, image_std=std)
        return hf.VlsaProcessor(images, model.tokenizer, chat_template=chat_template or None,
                                image_token=tokens.IMAGE_TOKEN, image_seq_length=model.num_patches)
    geometry = {"size": {"shortest_edge": s}, "crop_size": {"height": s, "width": s}, "image_mean": mean,
                "image_std": std, "resample": 3}  # 3: PIL bicubic, as the training views
    patch = model.vision_tower.config.patch_size
    extra = {"patch_size": patch, "vision_feature_select_strategy": _select_strategy(model),
             "num_additional_image_tokens": 1 if kind == "clip" else 0, "image_token": tokens.IMAGE_TOKEN,
             "chat_template": chat_template or None}
    if fmt == "llava":
        return LlavaProcessor(LlavaImageProcessorPil(**geometry, do_pad=True), model.tokenizer, **extra)
    images = LlavaNextImageProcessorPil(**geometry, image_grid_pinpoints=_pinpoints(model), do_pad=True)
    return LlavaNextProcessor(images, model.tokenizer, **extra)


def _save_processor(processor, folder: Path, fmt: str) -> None:
    """Tokenizer (left padding, for batched generation) and processor files; the VLSA ones name their code."""
    tokenizer = processor.tokenizer
    side, saved = tokenizer.padding_side, tokenizer.init_kwargs.get("padding_side")
    tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "left"  # init_kwargs: what gets saved
    try:
        processor.save_pretrained(folder)
    finally:
        tokenizer.padding_side = side
        if saved is None:
            tokenizer.init_kwargs.pop("padding_side")
        else:
            tokenizer.init_kwargs["padding_side"] = saved
    if fmt == "vlsa":  # transformers 5 keeps the image processor's settings inside processor_config.json
        path = folder / "processor_config.json"
        data = json.loads(path.read_text())
        data["auto_map"] = dict(hf.PROCESSOR_AUTO_MAP)
        data["image_processor"]["auto_map"] = dict(hf.IMAGE_PROCESSOR_AUTO_MAP)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------ folder


def write_transformers_folder(model, folder: Path, fmt: str, info: dict[str, Any], chat_template: str = "") -> None:
    """Weights, config, generation config, processor (+ tokenizer, + ``chat_template``) and, for ``vlsa``, its code,
    into ``folder``."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not a transformers format ({', '.join(FORMATS)})")
    folder.mkdir(parents=True, exist_ok=True)
    _write_weights({**transformers_state(model), **projector_state(model, fmt)}, folder)
    config = hf_config(model, fmt)
    config.dtype = str(next(model.language_model.parameters()).dtype).removeprefix("torch.")
    config.save_pretrained(folder)
    if model.language_model.generation_config is not None:
        model.language_model.generation_config.save_pretrained(folder)
    _save_processor(hf_processor(model, fmt, chat_template), folder, fmt)
    if fmt == "vlsa":
        for path in hf.CODE_FILES:
            shutil.copyfile(path, folder / path.name)
    (folder / INFO_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
