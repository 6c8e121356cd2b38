"""Export of an inference-only model: vision tower, projector, LLM and tokenizer, safetensors only.

The VAE, denoiser, Epigone and VQ-VAE are training-only (App. B.1) and are left out. The format (``format``):

- ``llava`` / ``llava_next`` / ``vlsa``: folders transformers loads (``vlsa.model.export_hf``): LLaVA-1.5 and
  LLaVA-NeXT baselines as transformers' own classes, VLSA as ``VlsaForConditionalGeneration``;
- ``package``: this package's own layout, for the projectors transformers has no class for (``hd_grid``,
  ``qformer``, ``pixel_unshuffle``, ``mlp2x_gelu`` over the canvas view);
- ``auto`` (default): the format of the model's projector (``export_hf.resolve_format``).

A folder also holds the model card (``README.md``) when one is given. The ``package`` layout::

    out_dir/vision/       save_pretrained of the vision tower
    out_dir/llm/          save_pretrained of the language model
    out_dir/tokenizer/    the tokenizer with the project's special tokens
    out_dir/projector.safetensors
    out_dir/vlsa_config.json   the model section of the config, pointing at the folders above
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from vlsa.config import Config, ModelConfig, config_from_dict
from vlsa.io import storage
from vlsa.model.builder import build_model
from vlsa.model.export_hf import INFO_NAME, resolve_format, write_transformers_folder
from vlsa.model.export_load import load_transformers_folder

CONFIG_NAME = "vlsa_config.json"
PROJECTOR_NAME = "projector.safetensors"


def inference_model_config(model_cfg: ModelConfig) -> dict:
    """The model section for inference: reconstruction, VDEP and VQ off, parts loaded from the export."""
    data = copy.deepcopy(dataclasses.asdict(model_cfg))
    data["recon"] = dataclasses.asdict(type(model_cfg.recon)(enabled=False))
    data["vdep"]["enabled"] = False
    data["vq"] = {"path": "", "subfolder": "", "init": {}}
    data["vision"].update(path="vision", subfolder="", init={})
    data["llm"].update(path="llm", subfolder="", init={})
    data["tokenizer"].update(path="tokenizer")
    return data


def export_inference_model(model, out_dir: str, format: str = "auto", card: str = "",
                           meta: dict | None = None, chat_template: str = "") -> Path | str:
    """Write the inference-only directory of a ``VLSAModel`` to a folder or ``s3://`` prefix; returns it.

    ``card``: the model card (``README.md``); ``meta``: what the card is made from (preset, stages, ...), kept in
    ``vlsa_export.json`` of the transformers formats; ``chat_template``: the Jinja template of their processor (the
    training template, ``vlsa.data.templates.jinja_template``). A local folder is written aside and renamed into
    place, so a crash never leaves a partial export.
    """
    fmt = resolve_format(model.config, format)
    if storage.is_s3(out_dir):  # build locally, then upload the finished folder
        with tempfile.TemporaryDirectory() as local:
            storage.upload_dir(export_inference_model(model, str(Path(local) / "export"), fmt, card, meta,
                                                     chat_template), out_dir)
        return out_dir
    out = Path(out_dir).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        if fmt == "package":
            _write_package(model, tmp)
        else:
            info = {"format": fmt, "model": inference_model_config(model.config), **(meta or {})}
            write_transformers_folder(model, tmp, fmt, info, chat_template)
        if card:
            (tmp / "README.md").write_text(card)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def export_format(path: str | Path) -> str:
    """The format of an exported local folder: ``package``, ``llava``, ``llava_next`` or ``vlsa``."""
    root = Path(path)
    if (root / CONFIG_NAME).is_file():
        return "package"
    if (root / INFO_NAME).is_file():
        return json.loads((root / INFO_NAME).read_text())["format"]
    raise FileNotFoundError(f"{root} is not an exported model: neither {CONFIG_NAME} nor {INFO_NAME} is there")


def is_export(path: str) -> bool:
    """Whether ``path`` (a folder or ``s3://`` prefix) holds an exported model of any format."""
    return any(storage.exists(storage.join(path, name)) for name in (CONFIG_NAME, INFO_NAME))


def _write_package(model, tmp: Path) -> None:
    """This package's own layout (see the module doc)."""
    from safetensors.torch import save_file

    model.vision_tower.save_pretrained(tmp / "vision", safe_serialization=True)
    model.language_model.save_pretrained(tmp / "llm", safe_serialization=True)
    model.tokenizer.save_pretrained(tmp / "tokenizer")
    state = {k: v.detach().contiguous().cpu() for k, v in model.projector.state_dict().items()}
    save_file(state, str(tmp / PROJECTOR_NAME))
    (tmp / CONFIG_NAME).write_text(json.dumps({"model": inference_model_config(model.config)}, indent=2))


def load_inference_model(path: str, cache_dir: str = "~/.cache/vlsa"):
    """A ``VLSAModel`` without VAE, denoiser, Epigone or VQ-VAE, from an exported folder (any format) or ``s3://``
    prefix."""
    root = storage.local_copy(path, cache_dir)
    if export_format(root) != "package":
        return load_transformers_folder(root)
    return _load_package(root)


def _load_package(root: Path):
    from safetensors.torch import load_file

    data = json.loads((root / CONFIG_NAME).read_text())["model"]
    for part in ("vision", "llm", "tokenizer"):
        data[part]["path"] = str(root / data[part]["path"])
    # no stage trains anything here; the empty stage keeps the config valid without recon
    cfg: Config = config_from_dict({"model": data, "train": {"stages": [{"name": "inference", "lr": {}}]}})
    model = build_model(cfg)
    model.projector.load_state_dict(load_file(str(root / PROJECTOR_NAME)))
    return model.eval()
