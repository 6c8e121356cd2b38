"""The inference-only model of a training checkpoint (local or ``s3://``).

A checkpoint holds weights only; the run's config says what to build. ``build_inference_model`` builds the vision
tower, projector, LLM and tokenizer, and their tensors are read from the stage-end ``model.safetensors`` by name
(``vlsa.model.weights.load_into``, positioned reads): the reconstruction head's tensors in the file are never read.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from vlsa.config import Config
from vlsa.model import weights
from vlsa.model.builder import build_inference_model
from vlsa.model.vlm import VLSAModel
from vlsa.train import checkpoint as ckpt

TRAINING_ONLY = ("recon_head.",)
"""State-dict prefixes of the training-only parts (Epigone, denoiser, VAE; ROSS's head) in a checkpoint."""


@dataclass(frozen=True)
class Source:
    """Which checkpoint was exported and what its trainer state says."""

    uri: str
    stage: str
    step: int


def resolve_checkpoint(uri: str) -> str:
    """``uri`` itself when it holds stage-end weights, else (a run folder) its newest stage-end checkpoint."""
    if ckpt.has_weights(uri):
        return uri
    finals = [c for c in ckpt.list_complete(uri) if c.final]
    if not finals:
        raise FileNotFoundError(f"{uri} is neither a stage-end checkpoint (no {ckpt.WEIGHTS}) nor a run folder "
                                "with a complete stage-end checkpoint")
    return finals[-1].uri


def describe(uri: str) -> Source:
    """Stage and step of a checkpoint (from its trainer state; unknown ones as empty / -1)."""
    try:
        state = ckpt.read_json(uri, ckpt.TRAINER_STATE)
    except (OSError, ValueError):
        return Source(uri, "", -1)
    return Source(uri, str(state.get("stage", "")), int(state.get("step", -1)))


def load_checkpoint_model(uri: str, cfg: Config) -> VLSAModel:
    """The inference-only model of ``cfg`` with the weights of the checkpoint at ``uri``."""
    model = build_inference_model(cfg)
    path = ckpt.weights_file(uri)
    if path is not None and path.endswith(ckpt.LEGACY_WEIGHTS):  # an older run's model.pt: read whole
        state = {k: v for k, v in ckpt.load_weights(uri).items() if not k.startswith(TRAINING_ONLY)}
        model.load_state_dict(state, strict=True)
        return model.eval()
    with tempfile.TemporaryDirectory(prefix="vlsa-export-") as scratch, ckpt.local_weights(uri, scratch) as local:
        stats = weights.load_into(model, [local], strict=False)
    extra = [k for k in stats.unexpected if not k.startswith(TRAINING_ONLY)]
    if extra:
        raise ValueError(f"checkpoint {uri} has {len(extra)} tensors the config's model lacks (first {extra[:3]}): "
                         f"is --config the run's config (preset {cfg.preset!r})?")
    return model.eval()
