"""Loading every model part through one path: ``from_pretrained``.

A part with a ``path`` (local directory, hub name, or ``s3://`` prefix fetched into the cache) is
loaded as is. A part with only an ``init`` dict is built at random from it (seeded), saved with
``save_pretrained`` under ``cache_dir/tiny/<name>-<hash>`` and loaded back, so tiny runs exercise
exactly the loading code of pretrained weights. Several Ray workers may build the same part at
once, so the save goes to a temporary folder that is renamed into place.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from vlsa.config import ComponentConfig, Config
from vlsa.io import storage


def load_component(part: ComponentConfig, cls: type, *, name: str, cache_dir: str, seed: int) -> Any:
    """An instance of ``cls`` loaded with ``from_pretrained`` from ``part.path`` or a saved tiny build.

    ``cls`` is a transformers model class (an ``Auto*`` class too) or a diffusers ``ModelMixin``.
    """
    if part.path:
        source = str(storage.local_copy(part.path, cache_dir)) if storage.is_s3(part.path) else part.path
        return _from_pretrained(cls, source, part.subfolder)
    if not part.init:
        raise ValueError(f"model part {name!r} has neither a `path` nor an `init` config")
    return _from_pretrained(cls, str(_tiny_dir(part.init, cls, name=name, cache_dir=cache_dir, seed=seed)), "")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def part_folder(part: ComponentConfig, cache_dir: str) -> Path:
    """The local folder ``from_pretrained`` reads a part with a ``path`` from: the folder itself, the
    cached copy of an ``s3://`` prefix, or the hub cache's snapshot of a hub name."""
    if storage.is_s3(part.path):
        base = storage.local_copy(part.path, cache_dir)
    elif Path(part.path).expanduser().is_dir():
        base = Path(part.path).expanduser()
    else:
        from huggingface_hub import snapshot_download

        patterns = [f"{part.subfolder}/*"] if part.subfolder else None
        base = Path(snapshot_download(part.path, allow_patterns=patterns))
    return base / part.subfolder if part.subfolder else base


def content_identity(part: ComponentConfig, cache_dir: str) -> dict[str, Any]:
    """What a part loaded from ``path`` is, independent of where it is stored: its config (without
    the ``_``-prefixed bookkeeping keys) and a SHA-256 over its weight files' names and contents."""
    try:
        folder = part_folder(part, cache_dir)
    except Exception as err:  # noqa: BLE001 - any failure to locate the weights names the part
        raise FileNotFoundError(f"cannot read the weights of {part.path!r} (subfolder {part.subfolder!r}) "
                                f"to fingerprint them: {type(err).__name__}: {err}") from None
    return _folder_identity(str(folder.resolve()))


@functools.lru_cache(maxsize=16)
def _folder_identity(folder: str) -> dict[str, Any]:
    root = Path(folder)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{root} has no config.json: not a saved model folder")
    config = {k: v for k, v in json.loads((root / "config.json").read_text()).items() if not k.startswith("_")}
    digest = hashlib.sha256()
    weights = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not weights:
        raise FileNotFoundError(f"{root} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    for path in weights:
        digest.update(path.relative_to(root).as_posix().encode() + b"\x00")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 23), b""):
                digest.update(chunk)
    return {"config": config, "weights": f"sha256:{digest.hexdigest()}"}


def _from_pretrained(cls: type, source: str, subfolder: str) -> Any:
    kwargs: dict[str, Any] = {"subfolder": subfolder} if subfolder else {}
    if hasattr(cls, "register_to_config") and importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False  # diffusers' faster default needs the optional accelerate
    return cls.from_pretrained(source, **kwargs)


def _tiny_dir(init: dict[str, Any], cls: type, *, name: str, cache_dir: str, seed: int) -> Path:
    """The folder of the saved random instance (built and saved here the first time)."""
    key = json.dumps({"cls": cls.__name__, "init": init, "seed": seed}, sort_keys=True, default=str)
    target = Path(cache_dir).expanduser() / "tiny" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        _save(_random_instance(cls, init, seed), tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # not a lost race with another worker: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _save(instance: Any, folder: Path) -> None:
    """``save_pretrained`` into ``folder`` on any process.

    transformers writes nothing on a non-zero ``torch.distributed`` rank, but every Ray worker must
    be able to build its part (workers need not share a disk), so its config and safetensors weights
    are written here in the layout ``from_pretrained`` reads. diffusers has no such rank check.
    """
    if hasattr(instance, "register_to_config"):
        instance.save_pretrained(folder)
        return
    from safetensors.torch import save_model

    instance.config.save_pretrained(folder)
    if instance.can_generate():
        instance.generation_config.save_pretrained(folder)
    save_model(instance, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _random_instance(cls: type, init: dict[str, Any], seed: int) -> Any:
    """A seeded random instance of ``cls`` from its config keyword arguments."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(cls, "register_to_config"):  # diffusers: the config is the constructor's kwargs
            return cls.from_config(dict(init))
        return _transformers_instance(cls, init)


def _transformers_instance(cls: type, init: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    config_class = getattr(cls, "config_class", None)  # Auto* classes have none: model_type picks it
    if config_class is None:
        kwargs = dict(init)
        if "model_type" not in kwargs:
            raise ValueError(f"init of {cls.__name__} needs a `model_type` key, got keys {sorted(init)}")
        return cls.from_config(AutoConfig.for_model(kwargs.pop("model_type"), **kwargs))
    return cls(config_class(**init))


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


def build_vae(cfg: Config):
    """The frozen SD3-style ``AutoencoderKL`` of the reconstruction target (eval mode, no gradients)."""
    from diffusers import AutoencoderKL

    part = cfg.model.recon.vae
    return _frozen(load_component(part, AutoencoderKL, name="vae", cache_dir=cfg.model.cache_dir, seed=cfg.model.seed))


def build_vq(cfg: Config):
    """The frozen ``VQModel`` whose codebook indices label cognition alignment (eval mode, no gradients)."""
    from diffusers import VQModel

    return _frozen(load_component(cfg.model.vq, VQModel, name="vq", cache_dir=cfg.model.cache_dir, seed=cfg.model.seed))


def build_vision(cfg: Config):
    """The vision tower: ``CLIPVisionModel`` or ``SiglipVisionModel`` per ``model.vision.kind``."""
    from transformers import CLIPVisionModel, SiglipVisionModel

    cls = {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}[cfg.model.vision.kind]
    return load_component(cfg.model.vision, cls, name="vision", cache_dir=cfg.model.cache_dir, seed=cfg.model.seed)


def build_llm(cfg: Config):
    """The language model (``AutoModelForCausalLM``)."""
    from transformers import AutoModelForCausalLM

    part = cfg.model.llm
    return load_component(part, AutoModelForCausalLM, name="llm", cache_dir=cfg.model.cache_dir, seed=cfg.model.seed)


def build_denoiser(cfg: Config):
    """The reconstruction denoiser (``SD3Transformer2DModel``)."""
    from diffusers import SD3Transformer2DModel

    part = cfg.model.recon.denoiser
    return load_component(part, SD3Transformer2DModel, name="denoiser", cache_dir=cfg.model.cache_dir, seed=cfg.model.seed)


def build_recon_head(cfg: Config, llm_dim: int):
    """Epigone + SD3 denoiser + frozen VAE, sized from the denoiser's own config."""
    from vlsa.model.epigone import Epigone
    from vlsa.model.reconstruction import ReconstructionHead

    recon = cfg.model.recon
    denoiser, vae = build_denoiser(cfg), build_vae(cfg)
    epigone = Epigone(llm_dim, cfg.model.epigone.rank, denoiser.config.joint_attention_dim, denoiser.config.pooled_projection_dim)
    return ReconstructionHead(
        epigone, denoiser, vae, image_size=recon.image_size, logit_mean=recon.logit_mean,
        logit_std=recon.logit_std, sample_steps=recon.sample_steps,
    )


def vq_code_count(cfg: Config) -> int:
    """Codebook size of the VQ-VAE when VQ targets are single tokens (``ssft.vq_encoding=tokens``), else 0."""
    if not any(s.data.ssft.vq_encoding == "tokens" and s.data.ssft.p_vq > 0 for s in cfg.train.stages):
        return 0
    part = cfg.model.vq
    if part.init:
        if "num_vq_embeddings" not in part.init:
            raise ValueError(f"ssft.vq_encoding=tokens needs model.vq.init.num_vq_embeddings; init has {sorted(part.init)}")
        return int(part.init["num_vq_embeddings"])
    from diffusers import VQModel

    source = str(storage.local_copy(part.path, cfg.model.cache_dir)) if storage.is_s3(part.path) else part.path
    kwargs = {"subfolder": part.subfolder} if part.subfolder else {}
    return int(VQModel.load_config(source, **kwargs)["num_vq_embeddings"])


def build_model_tokenizer(cfg: Config):
    """The tokenizer of ``cfg`` with the project's special tokens (and VQ code tokens when used)."""
    from vlsa.model.tokenizer import build_tokenizer

    return build_tokenizer(cfg.model.tokenizer, cfg.model.cache_dir, vq_codes=vq_code_count(cfg))


def build_model(cfg: Config):
    """The full ``VLSAModel`` of ``cfg`` with ``.tokenizer`` and ``.config`` attached."""
    from vlsa.model.vlm import VLSAModel

    return VLSAModel.from_config(cfg)
