"""Export of an inference-only model: vision tower, projector, LLM and tokenizer, safetensors only.

The VAE, denoiser, Epigone and VQ-VAE are training-only (App. B.1) and are left out. Layout::

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


def export_inference_model(model, out_dir: str) -> Path | str:
    """Write the inference-only directory of a ``VLSAModel`` to a folder or ``s3://`` prefix.

    A local folder is written aside and renamed into place, so a crash never leaves a partial export.
    """
    from safetensors.torch import save_file

    if storage.is_s3(out_dir):  # build locally, then upload the finished folder
        with tempfile.TemporaryDirectory() as local:
            storage.upload_dir(export_inference_model(model, str(Path(local) / "export")), out_dir)
        return out_dir
    out = Path(out_dir).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    model.vision_tower.save_pretrained(tmp / "vision", safe_serialization=True)
    model.language_model.save_pretrained(tmp / "llm", safe_serialization=True)
    model.tokenizer.save_pretrained(tmp / "tokenizer")
    state = {k: v.detach().contiguous().cpu() for k, v in model.projector.state_dict().items()}
    save_file(state, str(tmp / PROJECTOR_NAME))
    (tmp / CONFIG_NAME).write_text(json.dumps({"model": inference_model_config(model.config)}, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_inference_model(path: str, cache_dir: str = "~/.cache/vlsa"):
    """A ``VLSAModel`` without VAE, denoiser, Epigone or VQ-VAE, from an exported folder or ``s3://`` prefix."""
    from safetensors.torch import load_file

    root = storage.local_copy(path, cache_dir)
    data = json.loads((root / CONFIG_NAME).read_text())["model"]
    for part in ("vision", "llm", "tokenizer"):
        data[part]["path"] = str(root / data[part]["path"])
    # no stage trains anything here; the empty stage keeps the config valid without recon
    cfg: Config = config_from_dict({"model": data, "train": {"stages": [{"name": "inference", "lr": {}}]}})
    model = build_model(cfg)
    model.projector.load_state_dict(load_file(str(root / PROJECTOR_NAME)))
    return model.eval()
