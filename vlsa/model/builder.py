"""Loading every model part through one path: ``from_pretrained``.

A part with a ``path`` (local directory, hub name, or ``s3://`` prefix fetched into the cache) is
loaded as is. A part with only an ``init`` dict is built at random from it (seeded), saved with
``save_pretrained`` under ``cache_dir/tiny/<name>-<hash>`` and loaded back, so tiny runs exercise
exactly the loading code of pretrained weights. Several Ray workers may build the same part at
once, so the save goes to a temporary folder that is renamed into place.

Under ZeRO-3 (``zero3``: the stage's DeepSpeed config) every part is partitioned as it is created:
it is built from its config inside ``deepspeed.zero.Init`` (transformers parts with
``HfDeepSpeedConfig`` alive, which makes transformers enter it itself) and its safetensors weights
are read rank by rank, each rank reading only its own slices (``vlsa.model.weights``). A
transformers part stored without safetensors goes through transformers' own ZeRO-3 loading.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from vlsa.config import ComponentConfig, Config, ConfigError
from vlsa.io import storage
from vlsa.model import weights
from vlsa.model.epigone import Epigone
from vlsa.model.geometry import component_config, num_patches
from vlsa.model.projectors import build_projector
from vlsa.model.reconstruction import ReconstructionHead
from vlsa.model.ross import RossHead
from vlsa.model.tokenizer import build_tokenizer
from vlsa.model.vlm import VLSAModel
from vlsa.model.zero3 import is_partitioned, partitioning

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_LOADING = threading.RLock()
"""Held while a part loads or a tiny part is created: with accelerate installed, diffusers creates modules
inside accelerate's empty-weights context, which patches ``nn.Module.register_parameter`` for every thread."""


def load_component(part: ComponentConfig, cls: type, *, name: str, cache_dir: str, seed: int,
                   attn_implementation: str = "", zero3: dict[str, Any] | None = None) -> Any:
    """An instance of ``cls`` loaded with ``from_pretrained`` from ``part.path`` or a saved tiny build,
    in ``part.dtype`` (and with ``attn_implementation``, for transformers classes, when given).

    ``cls`` is a transformers model class (an ``Auto*`` class too) or a diffusers ``ModelMixin``.
    ``zero3``: a ZeRO-3 DeepSpeed config to build the part partitioned under (None: a plain build).
    """
    kwargs = _load_kwargs(cls, part.dtype, attn_implementation)
    if part.path:
        source, subfolder = str(storage.local_copy(part.path, cache_dir)), part.subfolder
    elif part.init:
        # the random tiny build is made and saved before any partitioning starts
        source, subfolder = str(_tiny_dir(part.init, cls, name=name, cache_dir=cache_dir, seed=seed)), ""
    else:
        raise ValueError(f"model part {name!r} has neither a `path` nor an `init` config")
    if zero3 is None:
        return _from_pretrained(cls, source, subfolder, kwargs)
    return _partitioned_load(cls, source, subfolder, zero3, kwargs)


def _load_kwargs(cls: type, dtype: str, attn_implementation: str) -> dict[str, Any]:
    """``from_pretrained`` keywords of the memory controls (``model.*.dtype``, ``model.attn_implementation``)."""
    diffusers = _is_diffusers(cls)
    kwargs: dict[str, Any] = {"torch_dtype" if diffusers else "dtype": DTYPES[dtype]}
    if attn_implementation and not diffusers:
        check_attention(attn_implementation)
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def check_attention(attn_implementation: str) -> None:
    """``flash_attention_2`` needs the flash_attn package: say so before any weights load."""
    if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("model.attn_implementation=flash_attention_2 needs the `flash_attn` package "
                          "(pip install flash-attn), which is not installed here; use sdpa")


def _is_diffusers(cls: type) -> bool:
    return hasattr(cls, "register_to_config")


def _partitioned_load(cls: type, source: str, subfolder: str, zero3: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """``cls`` built partitioned from the config in ``source``, then its weights read slice by slice."""
    files = weights.safetensors_files(Path(source) / subfolder)
    if not files and _is_diffusers(cls):
        raise ValueError(f"a ZeRO-3 build reads safetensors weights; {Path(source) / subfolder} has none")
    if not files:  # e.g. a hub name or .bin weights: transformers loads them partitioned itself
        with partitioning(zero3):
            return _from_pretrained(cls, source, subfolder, kwargs)
    with partitioning(zero3):
        model = _from_config(cls, source, subfolder, kwargs)
    # a pretrained file may hold more than this class uses (a CLIP checkpoint's text tower)
    weights.load_into(model, files, strict=False)
    return model.eval()


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


def _from_config(cls: type, source: str, subfolder: str, load_kwargs: dict[str, Any]) -> Any:
    """A new instance of ``cls`` from the config stored in ``source`` (weights not loaded), in the load dtype."""
    kwargs: dict[str, Any] = {"subfolder": subfolder} if subfolder else {}
    dtype = load_kwargs.get("torch_dtype", load_kwargs.get("dtype"))
    if _is_diffusers(cls):
        return _cast(cls.from_config(cls.load_config(source, **kwargs)), dtype)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, **kwargs)
    if "attn_implementation" in load_kwargs:
        config._attn_implementation = load_kwargs["attn_implementation"]
    if getattr(cls, "config_class", None) is None:  # an Auto* class picks the model class from the config
        return cls.from_config(config, dtype=dtype)
    return cls._from_config(config, dtype=dtype)


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model.to(dtype)`` for a diffusers model built from its config.

    diffusers' ``to`` warns on any dtype about modules that must stay fp32, even when a class lists none (every
    rank would print it); such a class keeps the warning, and with it the advice to load in that dtype.
    """
    if getattr(model, "_keep_in_fp32_modules", None):
        return model.to(dtype)
    return torch.nn.Module.to(model, dtype)


def _from_pretrained(cls: type, source: str, subfolder: str, kwargs: dict[str, Any]) -> Any:
    kwargs = dict(kwargs, subfolder=subfolder) if subfolder else dict(kwargs)
    if _is_diffusers(cls) and importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False  # diffusers' faster default needs the optional accelerate
    with _LOADING:  # accelerate's empty-weights init patches torch for the whole process while it runs
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
        with _LOADING:
            _save(random_instance(cls, init, seed), tmp)
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


def random_instance(cls: type, init: dict[str, Any], seed: int) -> Any:
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


def build_vae(cfg: Config, dtype: str | None = None):
    """The frozen SD3-style ``AutoencoderKL`` of the reconstruction target (eval mode, no gradients).

    ``dtype`` (``fp32`` / ``bf16``) overrides ``model.recon.vae.dtype``: the weights load in it, as diffusers
    asks, rather than being cast with ``.to(dtype)`` afterwards (which warns on every labeling actor).
    """
    from diffusers import AutoencoderKL

    part = dataclasses.replace(cfg.model.recon.vae, dtype=dtype) if dtype else cfg.model.recon.vae
    return _frozen(load_component(part, AutoencoderKL, name="vae", cache_dir=cfg.model.cache_dir, seed=cfg.model.seed))


def build_vq(cfg: Config):
    """The frozen ``VQModel`` whose codebook indices label cognition alignment (eval mode, no gradients)."""
    from diffusers import VQModel

    return _frozen(load_component(cfg.model.vq, VQModel, name="vq", cache_dir=cfg.model.cache_dir, seed=cfg.model.seed))


def build_vision(cfg: Config, zero3: dict[str, Any] | None = None):
    """The vision tower: ``CLIPVisionModel`` or ``SiglipVisionModel`` per ``model.vision.kind``."""
    from transformers import CLIPVisionModel, SiglipVisionModel

    cls = {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}[cfg.model.vision.kind]
    return load_component(cfg.model.vision, cls, name="vision", cache_dir=cfg.model.cache_dir, seed=cfg.model.seed,
                          attn_implementation=cfg.model.attn_implementation, zero3=zero3)


def build_llm(cfg: Config, zero3: dict[str, Any] | None = None):
    """The language model (``AutoModelForCausalLM``)."""
    from transformers import AutoModelForCausalLM

    part = cfg.model.llm
    return load_component(part, AutoModelForCausalLM, name="llm", cache_dir=cfg.model.cache_dir, seed=cfg.model.seed,
                          attn_implementation=cfg.model.attn_implementation, zero3=zero3)


def build_denoiser(cfg: Config, zero3: dict[str, Any] | None = None):
    """The reconstruction denoiser (``SD3Transformer2DModel``)."""
    from diffusers import SD3Transformer2DModel

    part = cfg.model.recon.denoiser
    return load_component(part, SD3Transformer2DModel, name="denoiser", cache_dir=cfg.model.cache_dir,
                          seed=cfg.model.seed, zero3=zero3)


def build_recon_head(cfg: Config, llm_dim: int, zero3: dict[str, Any] | None = None):
    """The reconstruction head of ``model.recon.head``: VLSA's (SD3) or ROSS's. With ``zero3`` its trained parts
    are partitioned; the VAE never is: it sits outside the module tree DeepSpeed manages, so each rank keeps it whole."""
    if cfg.model.recon.head == "ross":
        return build_ross_head(cfg, llm_dim, zero3)
    return build_sd3_head(cfg, llm_dim, zero3)


def build_ross_head(cfg: Config, llm_dim: int, zero3: dict[str, Any] | None = None):
    """ROSS: a random-init encoder-block denoiser conditioned on the LLM's image outputs + frozen KL VAE."""
    recon = cfg.model.recon
    vae = build_vae(cfg)
    with torch.random.fork_rng(devices=[]), partitioning(zero3):
        torch.manual_seed(cfg.model.seed)
        return RossHead(recon.ross, vae, cond_dim=llm_dim, image_size=recon.image_size,
                        sample_steps=recon.sample_steps)


def build_sd3_head(cfg: Config, llm_dim: int, zero3: dict[str, Any] | None = None):
    """Epigone + SD3 denoiser + frozen VAE, sized from the denoiser's own config."""
    recon = cfg.model.recon
    denoiser, vae = build_denoiser(cfg, zero3), build_vae(cfg)
    with partitioning(zero3):
        epigone = Epigone(llm_dim, cfg.model.epigone.rank, denoiser.config.joint_attention_dim,
                          denoiser.config.pooled_projection_dim)
    return ReconstructionHead(
        epigone, denoiser, vae, image_size=recon.image_size, logit_mean=recon.logit_mean,
        logit_std=recon.logit_std, sample_steps=recon.sample_steps,
    )


def vq_code_count(cfg: Config) -> int:
    """Codebook size of the VQ-VAE when VQ targets are single tokens (``ssft.vq_encoding=tokens``), else 0."""
    if not any(s.data.ssft.vq_encoding == "tokens" and s.data.ssft.p_vq > 0 for s in cfg.train.stages):
        return 0
    vq = component_config(cfg.model.vq, "model.vq")
    if "num_vq_embeddings" not in vq:
        raise ValueError(f"ssft.vq_encoding=tokens needs model.vq's num_vq_embeddings; its config has {sorted(vq)}")
    return int(vq["num_vq_embeddings"])


def build_model_tokenizer(cfg: Config):
    """The tokenizer of ``cfg`` with the project's special tokens (and VQ code tokens when used)."""
    return build_tokenizer(cfg.model.tokenizer, cfg.model.cache_dir, vq_codes=vq_code_count(cfg))


def build_model(cfg: Config, zero3: dict[str, Any] | None = None) -> VLSAModel:
    """The full ``VLSAModel`` of ``cfg`` (with ``.tokenizer``, and ``cfg.model`` as ``.config``): every part
    through ``load_component``; the new modules (projector, Epigone) are seeded with ``model.seed``.

    ``zero3``: the ZeRO-3 DeepSpeed config of the stage: every trainable part is then partitioned as
    it is created (see ``vlsa.model.zero3``); None builds every part whole.
    """
    tokenizer = build_model_tokenizer(cfg)
    vision, llm = build_vision(cfg, zero3), build_llm(cfg, zero3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.model.seed)
        projector = _new_projector(cfg, vision, llm, tokenizer, zero3)
        D = llm.get_input_embeddings().embedding_dim
        recon_head = build_recon_head(cfg, D, zero3) if cfg.model.recon.enabled else None
    return VLSAModel(cfg.model, vision, projector, llm, tokenizer, recon_head)


def build_inference_model(cfg: Config) -> VLSAModel:
    """The parts a trained model answers with: vision tower, projector, LLM and tokenizer (with the VQ code tokens
    the run trained with). The VAE, denoiser, Epigone and VQ-VAE are never built (only the VQ-VAE's config is read,
    for its codebook size); the model's config has reconstruction and VDEP off. Weights are the parts' starting
    ones: load a checkpoint's into it (``vlsa.export.checkpoint``)."""
    tokenizer = build_model_tokenizer(cfg)
    vision, llm = build_vision(cfg), build_llm(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.model.seed)
        projector = _new_projector(cfg, vision, llm, tokenizer, None)
    model_cfg = dataclasses.replace(cfg.model, recon=dataclasses.replace(cfg.model.recon, enabled=False),
                                    vdep=dataclasses.replace(cfg.model.vdep, enabled=False))
    return VLSAModel(model_cfg, vision, projector, llm, tokenizer)


def _new_projector(cfg: Config, vision, llm, tokenizer, zero3: dict[str, Any] | None):
    """The projector from vision width d to LLM width D, after the LLM's vocabulary is fitted to the tokenizer."""
    with partitioning(zero3):
        _fit_vocabulary(llm, tokenizer)
        d, D = vision.config.hidden_size, llm.get_input_embeddings().embedding_dim
        l = num_patches(vision.config.image_size, vision.config.patch_size)
        return build_projector(cfg.model.projector, d, D, num_patches=l, image_size=vision.config.image_size,
                               grids=cfg.model.encoding.anyres_grids)


def _fit_vocabulary(llm, tokenizer) -> None:
    """Grow the LLM's embeddings to the tokenizer (special tokens were added) and align pad/eos ids.

    transformers draws the new rows around the mean of the old ones; under ZeRO-3 its mean-resizing
    writes into a partitioned matrix it has not gathered, so there the new rows start from the
    model's own initialiser (stage-start weights, when a stage has them, overwrite them).
    """
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        partitioned = is_partitioned(llm.get_input_embeddings().weight)
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=not partitioned)
    llm.config.pad_token_id = tokenizer.pad_token_id
    if llm.generation_config is not None:
        llm.generation_config.pad_token_id = tokenizer.pad_token_id
