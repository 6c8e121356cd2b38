"""The run configuration: dataclasses are the schema, YAML presets the values.

Every field has a one-line docstring (the string literal under it). Unknown keys are errors, and
cross-field checks live in ``__post_init__`` so a bad config fails when it is loaded, not an hour
into a run. Presets live in ``vlsa/presets/*.yaml``; a preset may name another as ``base`` and
override part of it. Command lines and Tune spaces address fields by dotted paths
(``train.stages.0.global_batch=8``, ``model.projector.self_attention=false``).
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

PRESET_DIR = Path(__file__).parent / "presets"
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""``yaml.safe_load``'s loader on libyaml's parser where PyYAML has it: the same objects, a tenth of the time
(configs are loaded in every job, test and sweep point)."""


class ConfigError(ValueError):
    """A configuration that cannot describe a valid run."""


def _check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {choices}")


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


# ----------------------------------------------------------------------------------------- model


DTYPES = ("fp32", "bf16")
ATTENTION = ("sdpa", "eager", "flash_attention_2")
CHECKPOINTED = ("llm", "vision", "denoiser")


@dataclass
class ComponentConfig:
    """A pretrained part loaded with ``from_pretrained``."""

    path: str = ""
    """Local directory or ``s3://`` prefix of a ``save_pretrained`` directory; empty: build from ``init``."""
    subfolder: str = ""
    """Subfolder of ``path`` holding this part (e.g. ``transformer`` of an SD3 pipeline directory)."""
    init: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the part's config class for a random instance (tiny and benchmark sizes)."""
    dtype: str = "fp32"
    """Dtype the weights load in: ``fp32`` or ``bf16`` (half the memory while building); training casts them."""

    def defined(self) -> bool:
        return bool(self.path or self.init)


@dataclass
class VisionConfig(ComponentConfig):
    """The vision tower (CLIP or SigLIP vision transformer)."""

    kind: str = "clip"
    """Model class: ``clip`` (CLIPVisionModel) or ``siglip`` (SiglipVisionModel)."""
    select_layer: int = -2
    """Hidden-state layer whose patch tokens are used (-2: the penultimate layer, as LLaVA)."""

    def __post_init__(self) -> None:
        _check_choice("model.vision.kind", self.kind, ("clip", "siglip"))


@dataclass
class LLMConfig(ComponentConfig):
    """The language model (any ``AutoModelForCausalLM``)."""

    max_length: int = 2048
    """Longest token sequence (text + visual tokens) a sample may have."""
    loss_chunks: int = 0
    """L from the LM head in this many chunks of the supervised positions, each recomputed in the backward pass,
    so the (B, T, V) fp32 logits never exist (0: the plain head over every position; forward returns logits)."""

    def __post_init__(self) -> None:
        if self.loss_chunks < 0:
            raise ConfigError(f"model.llm.loss_chunks must be >= 0, got {self.loss_chunks}")


@dataclass
class TokenizerConfig:
    """The tokenizer; the image and SSFT marker tokens are added to it as special tokens."""

    path: str = ""
    """``from_pretrained`` directory or ``s3://`` prefix; empty: train a byte-level BPE offline."""
    vocab_size: int = 512
    """Vocabulary size of the offline BPE (ignored when ``path`` is set)."""
    chat_template: str = ""
    """Jinja chat template to set when the tokenizer has none (empty: keep the tokenizer's)."""


@dataclass
class EncodingConfig:
    """Compressive encoding input (Sec. 3.1): pad, split into tiles X_Hi, downsample to X_Lo."""

    max_tiles: int = 4
    """Cap on the number of tiles m; larger images are resized first."""
    lowres_view: str = "canvas"
    """X_Lo: the padded canvas resized (``canvas``, VLSA) or LLaVA-1.5's mean-colour square padding (``square_pad``)."""
    anyres_grids: list[list[int]] = field(default_factory=lambda: [[1, 2], [2, 1], [2, 2], [3, 1], [1, 3]])
    """LLaVA-NeXT ``image_grid_pinpoints`` in tiles (rows, cols) of the vision input side (the ``anyres`` projector)."""

    def __post_init__(self) -> None:
        _check_positive("model.encoding.max_tiles", self.max_tiles)
        _check_choice("model.encoding.lowres_view", self.lowres_view, ("canvas", "square_pad"))
        if not self.anyres_grids or any(len(g) != 2 or min(g) < 1 for g in self.anyres_grids):
            raise ConfigError(f"model.encoding.anyres_grids must be [rows, cols] pairs >= 1, got {self.anyres_grids}")


PROJECTORS = ("sa_perceiver", "mlp2x_gelu", "hd_grid", "anyres", "qformer", "pixel_unshuffle")


@dataclass
class ProjectorConfig:
    """The vision-language projector: the SA-Perceiver or a baseline (Tab. 8-9)."""

    type: str = "sa_perceiver"
    """One of sa_perceiver, mlp2x_gelu (LLaVA-1.5, low-res view), hd_grid (LLaVA-1.5-HD: base view + every tile),
    anyres (LLaVA-NeXT: its own tiling, unpadding and newline tokens), qformer, pixel_unshuffle."""
    heads: int = 16
    """Attention heads of the perceiver / resampler (d_h = d / heads)."""
    self_attention: bool = True
    """SA-Perceiver Eq. 2 self-attention; false is ablation ex1."""
    full_projections: bool = False
    """Separate q/k/v/o projections in both attentions; true is ablation ex2."""
    global_embedding: str = "query"
    """P from the learnable query (``query``) or mean pooling of V (``pool``, ablation ex3)."""
    num_queries: int = 0
    """Q-former queries (0: as many as low-res tokens l)."""
    key_init: str = "random"
    """Start of Eq. 2's w_k: ``random`` (PyTorch's default) or ``identity`` (tokens first attend to tokens like
    themselves; for small random vision towers, whose weak features make a random w_k average every token)."""

    def __post_init__(self) -> None:
        _check_choice("model.projector.type", self.type, PROJECTORS)
        _check_choice("model.projector.key_init", self.key_init, ("random", "identity"))
        _check_choice("model.projector.global_embedding", self.global_embedding, ("query", "pool"))
        _check_positive("model.projector.heads", self.heads)


@dataclass
class EpigoneConfig:
    """Epigone (Eq. 4): low-rank MLP from the projector outputs to the denoiser's conditioning."""

    rank: int = 256
    """Intermediate width of the two-layer MLP (App. B.1)."""


RECON_HEADS = ("sd3", "ross")
DDPM_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass
class RossDenoiserConfig:
    """ROSS's own denoiser (paper 004, Sec. 4.2, Fig. 4b): Transformer-encoder blocks, random init.

    Each block adds projections of the condition (the LLM's outputs at the image positions), the
    noisy latent tokens and the timestep embedding to its input, then runs a standard self-attention
    encoder block; the head predicts the DDPM noise epsilon per latent token.
    """

    layers: int = 3
    """Transformer-encoder blocks."""
    width: int = 1024
    """Token width inside the denoiser."""
    heads: int = 16
    """Attention heads per block."""
    train_timesteps: int = 1000
    """DDPM diffusion steps T (t is drawn uniformly from 0..T-1)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """DDPM noise schedule (diffusers ``DDPMScheduler`` name; cosine by default)."""

    def __post_init__(self) -> None:
        _check_choice("model.recon.ross.beta_schedule", self.beta_schedule, DDPM_SCHEDULES)
        for name in ("layers", "width", "heads", "train_timesteps"):
            _check_positive(f"model.recon.ross.{name}", getattr(self, name))
        if self.width % self.heads:
            raise ConfigError(f"model.recon.ross.width {self.width} is not divisible by heads {self.heads}")


@dataclass
class ReconConfig:
    """Reconstructive training with an LDM (Eq. 3): SD3 MMDiT denoiser and frozen VAE."""

    enabled: bool = True
    """Compute L_rec; false removes the denoiser, VAE and Epigone (LLaVA baselines)."""
    head: str = "sd3"
    """``sd3``: Epigone + SD3 MMDiT, rectified flow (VLSA); ``ross``: ROSS's encoder-block denoiser, DDPM epsilon loss."""
    ross: RossDenoiserConfig = field(default_factory=RossDenoiserConfig)
    """The ROSS denoiser (used when ``head`` is ``ross``; ``denoiser`` and ``epigone`` are then unused)."""
    conditioning: str = "projector"
    """Cue for the denoiser: ``projector`` outputs (VLSA) or ``llm_hidden`` states over the image span (ROSS, ex25)."""
    denoiser: ComponentConfig = field(default_factory=ComponentConfig)
    """``SD3Transformer2DModel``; initialised from SD3-medium when a path is given."""
    vae: ComponentConfig = field(default_factory=ComponentConfig)
    """Frozen ``AutoencoderKL`` (16 latent channels in SD3)."""
    image_size: int = 336
    """Side of the square image the VAE encodes; latent side = image_size / vae downsampling."""
    logit_mean: float = 0.0
    """Mean of the logit-normal timestep distribution (SD3)."""
    logit_std: float = 1.0
    """Std of the logit-normal timestep distribution (SD3)."""
    sample_steps: int = 28
    """Euler steps of the multi-step ``sample()`` used for reconstruction grids."""

    def __post_init__(self) -> None:
        _check_choice("model.recon.conditioning", self.conditioning, ("projector", "llm_hidden"))
        _check_choice("model.recon.head", self.head, RECON_HEADS)
        if self.head == "ross" and self.conditioning != "llm_hidden":
            raise ConfigError("model.recon.head=ross conditions on the LLM's image outputs: set model.recon.conditioning=llm_hidden")
        _check_positive("model.recon.image_size", self.image_size)


@dataclass
class VDEPConfig:
    """VDEP objective (paper 003): LLM hidden states at image positions regress projector outputs."""

    enabled: bool = False
    """Add alpha * L_vdep to the loss."""
    alpha: float = 0.001
    """Weight alpha of L_vdep."""
    autoregressive: bool = True
    """Hidden state at image position i regresses the projector output at i+1 (false: same position)."""
    split_batch: bool = True
    """In pre-training, the data doubled (as the paper): every sample once in VDEP mode, once in plain mode."""
    in_finetuning: bool = False
    """Also add L_vdep in stages that train the LLM (the paper uses it in pre-training only)."""


@dataclass
class ModelConfig:
    """The full model: vision tower -> projector -> LLM, plus the training-only heads."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    """Vision tower."""
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    """Compressive encoding input."""
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    """Vision-language projector."""
    epigone: EpigoneConfig = field(default_factory=EpigoneConfig)
    """Epigone."""
    recon: ReconConfig = field(default_factory=ReconConfig)
    """Reconstruction head."""
    vdep: VDEPConfig = field(default_factory=VDEPConfig)
    """VDEP objective."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """Language model."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Tokenizer."""
    vq: ComponentConfig = field(default_factory=ComponentConfig)
    """Frozen VQ-VAE (``diffusers.VQModel``) whose codebook indices label cognition alignment."""
    vq_image_size: int = 672
    """Side of the square image the VQ-VAE encodes; its quarters give the VQ targets (Tab. 20: 672 -> 1764 per quarter)."""
    cache_dir: str = "~/.cache/vlsa"
    """Where ``s3://`` components are downloaded and tiny random components are saved."""
    seed: int = 0
    """Seed of the random initialisation of components built from ``init``."""
    attn_implementation: str = "sdpa"
    """Attention of the LLM and vision tower: ``sdpa``, ``eager`` or ``flash_attention_2`` (needs flash_attn)."""

    def __post_init__(self) -> None:
        _check_choice("model.attn_implementation", self.attn_implementation, ATTENTION)
        parts = {"vision": self.vision, "llm": self.llm, "recon.denoiser": self.recon.denoiser,
                 "recon.vae": self.recon.vae, "vq": self.vq}
        for name, part in parts.items():
            _check_choice(f"model.{name}.dtype", part.dtype, DTYPES)


# ------------------------------------------------------------------------------------------ data


TEMPLATES = ("plain", "vicuna_v1", "llama3", "chatml")


@dataclass
class DecodeConfig:
    """Safe image decoding limits, shared by training and labeling."""

    formats: list[str] = field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
    """Allowed image formats (as PIL names them)."""
    max_pixels: int = 64_000_000
    """Largest width*height accepted (decompression-bomb guard)."""
    max_bytes: int = 64 * 1024 * 1024
    """Largest encoded file accepted."""


@dataclass
class SSFTConfig:
    """Cognition alignment (Sec. 3.2): VQ-index and pixel-value question/answer pairs."""

    p_vq: float = 0.0
    """Probability that a sample gets a VQ-index turn pair."""
    p_px: float = 0.0
    """Probability that a sample gets a pixel-value turn pair."""
    max_target_tokens: int = 1024
    """Token budget of one SSFT answer; larger targets use a smaller region or a strided grid."""
    max_vq_tokens: int = 0
    """Token budget of the VQ answer alone (0: ``max_target_tokens``); paper presets fit the whole quarter."""
    vq_encoding: str = "text"
    """VQ indices as text numbers (``text``, the paper) or one new token per code (``tokens``)."""

    def budget(self, kind: str) -> int:
        """Token budget of an answer of ``kind`` (``vq`` or ``px``)."""
        return self.max_vq_tokens if kind == "vq" and self.max_vq_tokens else self.max_target_tokens

    def __post_init__(self) -> None:
        for name in ("p_vq", "p_px"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"ssft.{name} must be in [0, 1], got {value}")
        _check_choice("ssft.vq_encoding", self.vq_encoding, ("text", "tokens"))
        _check_positive("ssft.max_target_tokens", self.max_target_tokens)
        if self.max_vq_tokens < 0:
            raise ConfigError(f"ssft.max_vq_tokens must be >= 0, got {self.max_vq_tokens}")


@dataclass
class DataConfig:
    """One stage's training data."""

    train: str = ""
    """LLaVA JSON or JSONL file (local or ``s3://``); empty in the tiny preset: the generated demo set."""
    image_root: str = ""
    """Folder or ``s3://`` prefix that image paths are relative to."""
    labels: str = ""
    """Labels written by ``ray_jobs/label.py``; empty: compute labels in-process (small runs)."""
    label_cache: str = "~/.cache/vlsa/labels"
    """Node-local scratch folder where label shards in S3 are copied once per node (empty: read S3 directly)."""
    template: str = "plain"
    """Chat template: plain (Stage I), vicuna_v1, llama3, chatml."""
    reject_threshold: float = 0.05
    """Stop with an error when more than this fraction of records is rejected (at validation, and
    counting the records found bad during training)."""
    allow_duplicate_ids: bool = False
    """Skip (and count) records whose id repeats an earlier one; False: a repeated id is an error."""
    ssft: SSFTConfig = field(default_factory=SSFTConfig)
    """Cognition-alignment augmentation of this stage's conversations."""

    def __post_init__(self) -> None:
        _check_choice("data.template", self.template, TEMPLATES)
        if not 0.0 <= self.reject_threshold <= 1.0:
            raise ConfigError(f"data.reject_threshold must be in [0, 1], got {self.reject_threshold}")


# ----------------------------------------------------------------------------------------- train


MODULES = ("vision", "projector", "llm", "epigone", "denoiser")


@dataclass
class StageConfig:
    """One training stage (Tab. 7): its data, trainable modules and hyper-parameters."""

    name: str = "stage1"
    """Stage name, used for MLflow nested runs and checkpoint folders."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data of this stage."""
    lr: dict[str, float] = field(default_factory=lambda: {"projector": 1e-3, "epigone": 1e-3, "denoiser": 1e-3})
    """Trainable modules and their learning rates; a module not named is frozen."""
    global_batch: int = 128
    """Samples per optimizer step over all workers (accumulation is derived from it)."""
    micro_batch: int = 16
    """Samples per worker per forward pass."""
    epochs: float = 1.0
    """Passes over the stage's data."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run the epochs)."""
    warmup_ratio: float = 0.03
    """Fraction of steps of linear warm-up before the cosine decay."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage 1-3 (2 for Stage I, 3 for Stage II); stage 0 cannot skip a non-finite step."""
    w_lm: float = 1.0
    """Weight of the language-modeling loss L."""
    w_rec: float = 1.0
    """Weight of the reconstruction loss L_rec."""
    activation_checkpointing: list[str] = field(default_factory=list)
    """Parts whose activations are recomputed in the backward pass instead of kept: any of llm, vision, denoiser."""

    def __post_init__(self) -> None:
        for part in self.activation_checkpointing:
            _check_choice(f"stage {self.name} activation_checkpointing part", part, CHECKPOINTED)
        unknown = set(self.lr) - set(MODULES)
        if unknown:
            raise ConfigError(f"stage {self.name}: unknown modules in lr: {sorted(unknown)}; known: {MODULES}")
        _check_choice(f"stage {self.name} zero_stage", self.zero_stage, (1, 2, 3))
        _check_positive(f"stage {self.name} global_batch", self.global_batch)
        _check_positive(f"stage {self.name} micro_batch", self.micro_batch)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"stage {self.name}: warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    def accumulation(self, world_size: int) -> int:
        """Gradient-accumulation steps so that micro_batch * accumulation * world_size == global_batch."""
        problem = self.batch_problem(world_size)
        if problem:
            raise ConfigError(problem)
        return self.global_batch // (self.micro_batch * world_size)

    def batch_problem(self, world_size: int) -> str:
        """Why ``global_batch`` cannot be split over ``world_size`` workers, with the values that would work;
        empty when it can."""
        per_step = self.micro_batch * world_size
        if self.global_batch % per_step == 0:
            return ""
        micro = _divisors(self.global_batch // world_size) if self.global_batch % world_size == 0 else []
        workers = _divisors(self.global_batch // self.micro_batch) if self.global_batch % self.micro_batch == 0 else []
        return (
            f"stage {self.name}: global_batch {self.global_batch} is not a multiple of micro_batch "
            f"{self.micro_batch} x workers {world_size} = {per_step}. With {world_size} workers, micro_batch "
            f"may be {micro or 'nothing (global_batch is not a multiple of the workers)'}; with micro_batch "
            f"{self.micro_batch}, workers may be {workers or 'nothing'}; or set global_batch to a multiple "
            f"of {per_step}"
        )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass
class TrainConfig:
    """Settings shared by all stages."""

    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    """Stages run in order, each starting from the previous stage's weights."""
    init_from: str = ""
    """Checkpoint (local or ``s3://``) whose model weights the first stage starts from (e.g. a Stage I run)."""
    seed: int = 0
    """Seed of data order, augmentation and noise."""
    grad_clip: float = 1.0
    """Gradient-norm clipping."""
    precision: str = "auto"
    """``auto`` (bf16 on GPU, fp32 on CPU), ``bf16`` or ``fp32``."""
    max_consecutive_skips: int = 5
    """Stop with an error after this many consecutive steps with a non-finite loss or gradient."""
    checkpoint_every: int = 0
    """Save a checkpoint every N optimizer steps (0: at the end of each stage only)."""
    keep_checkpoints: int = 2
    """Mid-stage checkpoints kept per stage (older ones are deleted; stage-end checkpoints are always kept)."""
    loader_workers: int = 2
    """Data-loader worker processes per training worker (0: load in the training process); the Ray
    Train workers themselves are ``run.num_workers``."""
    zero3_live_parameters: int = 1_000_000_000
    """ZeRO-3: most parameter values gathered (whole) at once on a rank (DeepSpeed's stage3_max_live_parameters)."""
    zero3_reuse_distance: int = 1_000_000_000
    """ZeRO-3: a gathered parameter stays gathered when used again within this many values (stage3_max_reuse_distance)."""
    zero3_prefetch_values: int = 50_000_000
    """ZeRO-3: parameter values gathered ahead of their use, on top of those in use (stage3_prefetch_bucket_size)."""
    zero3_reduce_bucket_values: int = 500_000_000
    """ZeRO-3: gradient values collected before each reduce-scatter (DeepSpeed's reduce_bucket_size; its buffer is
    allocated at this size)."""

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("train.stages is empty")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"train.stages names repeat: {names}")
        _check_choice("train.precision", self.precision, ("auto", "bf16", "fp32"))
        _check_positive("train.max_consecutive_skips", self.max_consecutive_skips)
        _check_positive("train.keep_checkpoints", self.keep_checkpoints)
        _check_positive("train.zero3_live_parameters", self.zero3_live_parameters)
        _check_positive("train.zero3_reduce_bucket_values", self.zero3_reduce_bucket_values)
        if self.zero3_prefetch_values < 0:
            raise ConfigError(f"train.zero3_prefetch_values must be >= 0, got {self.zero3_prefetch_values}")
        if self.zero3_reuse_distance < 0:
            raise ConfigError(f"train.zero3_reuse_distance must be >= 0, got {self.zero3_reuse_distance}")


@dataclass
class MLflowConfig:
    """Experiment tracking."""

    tracking_uri: str = ""
    """MLflow tracking URI; empty: ``MLFLOW_TRACKING_URI`` or ``./mlruns``."""
    experiment: str = "vlsa"
    """Experiment name (created as a model-training experiment)."""
    system_metrics_interval_s: float = 10.0
    """Seconds between samples of CPU, memory and GPU use on each node, logged to the stage's run (0: off)."""
    register_model: bool = True
    """Register the final checkpoint of a training job as a version of the registered model ``run.name``."""

    def __post_init__(self) -> None:
        if self.system_metrics_interval_s < 0:
            raise ConfigError(f"run.mlflow.system_metrics_interval_s must be >= 0, "
                              f"got {self.system_metrics_interval_s}")


@dataclass
class RunConfig:
    """Where and how a job runs on Ray."""

    name: str = "vlsa"
    """Run name; a re-run with the same name continues the run."""
    storage_path: str = "./runs"
    """Local folder or ``s3://`` prefix for checkpoints and outputs."""
    num_workers: int = 1
    """Ray Train workers (one DeepSpeed engine each); data-loader processes are ``train.loader_workers``."""
    use_gpu: bool = False
    """One GPU per worker."""
    cpus_per_worker: int = 1
    """Logical CPUs each worker reserves."""
    accelerator_type: str = ""
    """GPU kind the workers must run on, as Ray names it (``A100-40G``, ``A100-80G``); empty: any."""
    max_failures: int = 2
    """Worker failures tolerated (restart from the newest complete checkpoint)."""
    scratch_dir: str = ""
    """Local folder for checkpoint writes and restores on every node (local NVMe on a cluster); empty: the
    node's ``VLSA_SCRATCH_DIR``, else ``vlsa-scratch`` in the system temp folder. A node's workers share it."""
    start_timeout_s: float = 600.0
    """Seconds a (re)start of the workers waits for their resources (a lost node that does not come
    back); after three such tries the run stops with an error naming what is missing and how to resume."""
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    """Experiment tracking."""

    def __post_init__(self) -> None:
        if not self.start_timeout_s > 0:
            raise ConfigError(f"run.start_timeout_s must be > 0, got {self.start_timeout_s}")


# ------------------------------------------------------------------------------------- label/eval


@dataclass
class LabelConfig:
    """The labeling job (VQ indices, pixel targets, VAE latents)."""

    batch_size: int = 16
    """Images per model call in a labeling actor."""
    num_actors: int = 0
    """Labeling actors (0: as many as the cluster's GPUs, or its CPUs minus those reading)."""
    gpus_per_actor: float = 1.0
    """GPUs each actor reserves (0: CPU actors); a cluster without that many GPUs is an error, not a CPU fallback."""
    rows_per_shard: int = 256
    """Rows of one output Parquet shard, also one actor call (its decoded images travel together: ~2 MB each at 672 px)."""
    precision: str = "fp32"
    """``fp32`` or ``bf16``: dtype of the VAE encoder (latents within 3% relative L2 of fp32 on the test images)."""
    vq_precision: str = "fp32"
    """``fp32``, ``fp16`` or ``bf16``: dtype of the VQ-VAE encoder (its ``quant_conv`` and the nearest-code search stay
    fp32). fp16 keeps >= 99% of the fp32 indices on the test images (99.76% of 4,096 measured); bf16 does not (98.2%):
    every bf16 convolution's rounding flips near-tied codes, so keeping only the last parts fp32 does not help. On an
    Ampere or newer GPU ``fp32`` runs the convolutions in TF32 (PyTorch's default ``torch.backends.cudnn.allow_tf32``):
    99.95% of exact fp32's indices with that rounding simulated (docs/benchmarks.md)."""
    write_ahead: int = 1
    """Shards an actor may hold waiting for their upload while it labels the next (0: write in line)."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """Safe-decoding limits."""
    min_gpus: int = 0
    """GPUs the cluster must have before labeling starts; they are requested from the autoscaler and waited
    for (a cluster scaled to zero has none when the job starts). 0: start with what the cluster has."""
    wait_timeout_s: float = 1800.0
    """How long to wait for ``min_gpus`` before failing with the GPUs that did join."""

    def __post_init__(self) -> None:
        _check_positive("label.batch_size", self.batch_size)
        _check_positive("label.wait_timeout_s", self.wait_timeout_s)
        if self.min_gpus < 0:
            raise ConfigError(f"label.min_gpus must be >= 0, got {self.min_gpus}")
        _check_positive("label.rows_per_shard", self.rows_per_shard)
        _check_choice("label.precision", self.precision, ("fp32", "bf16"))
        _check_choice("label.vq_precision", self.vq_precision, ("fp32", "fp16", "bf16"))
        if self.write_ahead < 0:
            raise ConfigError(f"label.write_ahead must be >= 0, got {self.write_ahead}")
        if self.num_actors < 0 or self.gpus_per_actor < 0:
            raise ConfigError(f"label.num_actors and label.gpus_per_actor must be >= 0, got {self.num_actors}, {self.gpus_per_actor}")


@dataclass
class EvalConfig:
    """Held-out evaluation and batch inference."""

    data: str = ""
    """Question file in the LLaVA question format; empty in the tiny preset: the demo held-out split."""
    image_root: str = ""
    """Folder or ``s3://`` prefix of the question images."""
    template: str = "vicuna_v1"
    """Chat template used to pose the questions."""
    max_new_tokens: int = 16
    """Greedy-decoding budget per answer (temperature 0, as the paper)."""
    batch_size: int = 8
    """Questions per model call."""
    num_actors: int = 0
    """Inference actors of the Ray job (0: one per GPU, or the cluster's CPUs minus one without GPUs)."""

    def __post_init__(self) -> None:
        _check_choice("eval.template", self.template, TEMPLATES)
        _check_positive("eval.batch_size", self.batch_size)
        _check_positive("eval.max_new_tokens", self.max_new_tokens)
        if self.num_actors < 0:
            raise ConfigError(f"eval.num_actors must be >= 0, got {self.num_actors}")


@dataclass
class DemoTowerConfig:
    """Contrastive image-caption pretraining of the demo's random vision tower (``vlsa.data.demo_tower``):
    a real run starts from a pretrained CLIP, the ``tiny`` preset's tower starts random."""

    epochs: int = 8
    """Epochs of pretraining before the stages run; 0 keeps the random tower. Unused when
    ``model.vision.path`` names a tower."""
    images: int = 3000
    """Freshly drawn scenes (neither training nor held-out images) the tower is pretrained on."""
    batch: int = 64
    """Scene-caption pairs per contrastive step."""
    lr: float = 1e-3
    """AdamW learning rate."""

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"demo.tower.epochs must be >= 0, got {self.epochs}")
        _check_positive("demo.tower.batch", self.batch)
        _check_positive("demo.tower.lr", self.lr)
        if self.epochs and self.images < self.batch:
            raise ConfigError(f"demo.tower.images ({self.images}) must hold at least one batch "
                              f"(demo.tower.batch {self.batch})")


@dataclass
class DemoConfig:
    """The generated demo dataset used by the embedded default."""

    train_images: int = 600
    """Images of the instruction split (each gives several conversations)."""
    eval_images: int = 150
    """Images of the held-out split."""
    min_side: int = 24
    """Smallest image side in pixels."""
    max_side: int = 96
    """Largest image side in pixels."""
    tower: DemoTowerConfig = field(default_factory=DemoTowerConfig)
    """Pretraining of the random vision tower before the stages (not part of the drawn data)."""

    def __post_init__(self) -> None:
        _check_positive("demo.min_side", self.min_side)
        if self.max_side < self.min_side:
            raise ConfigError(f"demo.max_side {self.max_side} is below demo.min_side {self.min_side}")


@dataclass
class TuneConfig:
    """Hyper-parameter sweeps (``ray_jobs/tune.py``) and ablation tables."""

    metric: str = "loss"
    """Metric the sweep optimises: any key training reports (``loss``, ``loss_lm``) or ``eval_accuracy`` (held-out)."""
    mode: str = "min"
    """``min`` or ``max`` of ``metric``."""
    num_samples: int = 1
    """Samples of the search space (each grid point is repeated this many times)."""
    scheduler: str = "fifo"
    """``fifo`` (every trial runs to its end) or ``asha`` (early stopping of poor trials)."""
    search: str = "auto"
    """``grid`` (Tune's variant generator: grids and random draws), ``optuna`` (TPE over the space's continuous
    domains), ``auto``: optuna when the space has a continuous domain and no grid, else grid."""
    report_every: int = 25
    """Optimizer steps per report to Tune (the mean losses over those steps; a stage's last step always
    reports). Reports closer than Ray Train's 2 s poll wait for it: docs/benchmarks.md has the overhead."""
    grace_period: int = 25
    """ASHA: optimizer steps (``global_step``, over all stages) a trial runs before it may be stopped."""
    reduction_factor: int = 2
    """ASHA: fraction of trials promoted at each rung is 1/reduction_factor."""
    max_concurrent: int = 0
    """Trials run at once (0: as many as the cluster's CPUs fit, trial drivers and their workers included)."""
    max_failures: int = 0
    """Retries of a failed trial (it continues from its newest checkpoint)."""
    variant: str = ""
    """Label of a named grid point (set by the sweep; informational)."""

    def __post_init__(self) -> None:
        _check_choice("tune.mode", self.mode, ("min", "max"))
        _check_choice("tune.scheduler", self.scheduler, ("fifo", "asha"))
        _check_choice("tune.search", self.search, ("auto", "grid", "optuna"))
        for name in ("num_samples", "report_every", "grace_period", "reduction_factor"):
            _check_positive(f"tune.{name}", getattr(self, name))
        if self.max_concurrent < 0 or self.max_failures < 0:
            raise ConfigError(f"tune.max_concurrent and tune.max_failures must be >= 0, got "
                              f"{self.max_concurrent}, {self.max_failures}")
        if self.scheduler == "asha" and self.final_metric():
            raise ConfigError(f"tune.scheduler=asha stops trials on a metric reported during training; "
                              f"tune.metric={self.metric!r} is only measured after training")

    def final_metric(self) -> bool:
        """Whether ``metric`` is measured once after training (the held-out ``eval_*`` metrics)."""
        return self.metric.startswith("eval_")


@dataclass
class BenchConfig:
    """Benchmark sizes (``python -m vlsa.bench``); the model sizes come from the preset's parts."""

    batch: int = 2
    """Samples per training step, the same for VLSA and the AnyRes baseline."""
    text_tokens: int = 16
    """Text tokens per sample besides the visual tokens."""
    tiles: int = 4
    """High-resolution tiles m per image in the step benchmarks (at most model.encoding.max_tiles)."""
    stage: int = -1
    """Index of the train stage whose trainable modules and learning rates the step uses."""
    warmup: int = 2
    """Untimed steps per variant before timing."""
    repeats: int = 5
    """Timed steps per variant, interleaved A/B."""
    latency_grids: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Latency inputs: square images of side g x the vision input size (g*g tiles), one per entry."""
    label_images: int = 16
    """Images labelled per timed pass of the labeling benchmark."""
    threads: int = 0
    """torch CPU threads while measuring (0: torch's default)."""

    def __post_init__(self) -> None:
        for name in ("batch", "text_tokens", "tiles", "repeats", "label_images"):
            _check_positive(f"bench.{name}", getattr(self, name))
        if not self.latency_grids or min(self.latency_grids) < 1:
            raise ConfigError(f"bench.latency_grids must be a non-empty list of ints >= 1, got {self.latency_grids}")
        if self.warmup < 0 or self.threads < 0:
            raise ConfigError(f"bench.warmup and bench.threads must be >= 0, got {self.warmup}, {self.threads}")


@dataclass
class Config:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The model."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training stages and shared training settings."""
    run: RunConfig = field(default_factory=RunConfig)
    """Ray and tracking settings."""
    label: LabelConfig = field(default_factory=LabelConfig)
    """Labeling job."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    demo: DemoConfig = field(default_factory=DemoConfig)
    """Generated demo data."""
    bench: BenchConfig = field(default_factory=BenchConfig)
    """Benchmark sizes."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """Sweeps and ablation tables."""
    preset: str = ""
    """Name of the preset this config came from (informational)."""

    def __post_init__(self) -> None:
        self._check_components()
        recon = self.model.recon
        if recon.conditioning == "llm_hidden" and not recon.enabled:
            raise ConfigError("model.recon.conditioning=llm_hidden needs model.recon.enabled=true")
        for stage in self.train.stages:
            if not recon.enabled and ({"denoiser", "epigone"} & set(stage.lr)):
                raise ConfigError(f"stage {stage.name} trains denoiser/epigone but model.recon.enabled=false")
            if recon.head == "ross" and "epigone" in stage.lr:
                raise ConfigError(f"stage {stage.name} trains epigone, which ROSS's head does not have (model.recon.head=ross)")

    def _check_components(self) -> None:
        model = self.model
        needed = {"model.vision": model.vision, "model.llm": model.llm}
        if model.recon.enabled:
            needed["model.recon.vae"] = model.recon.vae
        if model.recon.enabled and model.recon.head == "sd3":  # ROSS's denoiser is built from model.recon.ross
            needed["model.recon.denoiser"] = model.recon.denoiser
        if any(s.data.ssft.p_vq > 0 for s in self.train.stages):
            needed["model.vq"] = model.vq
        missing = [name for name, part in needed.items() if not part.defined()]
        if missing:
            raise ConfigError(f"these model parts need a `path` or an `init` config: {missing}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict[str, Any] | Iterable[str]) -> "Config":
        """A new, validated config: this one with dotted overrides applied, given as ``load_config`` takes
        them (``{"run.name": "x"}`` or ``["run.name=x"]``). This config is left unchanged."""
        data = self.to_dict()
        pairs = overrides.items() if isinstance(overrides, dict) else parse_overrides(overrides)
        for key, value in pairs:
            apply_override(data, key, value)
        return config_from_dict(data)


# ----------------------------------------------------------------------------------------- loading


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys are errors naming their path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown keys {unknown}; known: {sorted(known)}")
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}" if where else name) for name, value in data.items()}
    return cls(**kwargs)


def _float_literal(value: str, where: str) -> float:
    """YAML 1.1 (PyYAML) reads ``1e-3`` and ``2e-5``, written without a dot, as strings: accept them as numbers."""
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{where}: expected float, got {value!r}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(item, v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {k: _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        return _float_literal(value, where)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(preset_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = Path(preset_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{preset_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"no preset or config file {preset_or_path!r}; presets: {list_presets()}")
    data = yaml.load(path.read_text(), Loader=YAML_LOADER) or {}
    base = data.pop("base", None)
    if base is None:
        return data
    if base in seen:
        raise ConfigError(f"preset inheritance loops: {' -> '.join(seen + (base,))}")
    return deep_merge(_read_yaml(base, seen + (base,)), data)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``; nested mappings merge, everything else (lists too) is replaced."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in a nested dict/list structure; list items are addressed by index."""
    keys = dotted.split(".")
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        node = _child(node, key, ".".join(keys[: i + 1]), create=True)
    last = keys[-1]
    if isinstance(node, list):
        node[_index(node, last, dotted)] = value
    else:
        node[last] = value


def _child(node: Any, key: str, where: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, key, where)]
    if key not in node:
        if not create:
            raise ConfigError(f"no config key {where}")
        node[key] = {}
    return node[key]


def _index(node: list, key: str, where: str) -> int:
    if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
        raise ConfigError(f"{where}: {key!r} is not an index of a list of {len(node)}")
    return int(key)


def parse_overrides(overrides: Iterable[str]) -> list[tuple[str, Any]]:
    """``key=value`` strings to (key, YAML-parsed value) pairs."""
    pairs = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        pairs.append((key.strip(), yaml.safe_load(raw) if raw.strip() else ""))
    return pairs


def load_config(preset_or_path: str = "tiny", overrides: Iterable[str] | dict[str, Any] = ()) -> Config:
    """Load a preset name or YAML path, apply dotted overrides, and validate.

    ``overrides`` is a list of ``key=value`` strings (values parsed as YAML) or a mapping of dotted
    keys to values (as Tune passes them).
    """
    data = _read_yaml(preset_or_path)
    pairs = overrides.items() if isinstance(overrides, dict) else parse_overrides(overrides)
    for key, value in pairs:
        apply_override(data, key, value)
    data.setdefault("preset", Path(preset_or_path).stem)
    return from_dict(Config, data)


def check_batches(cfg: Config, world_size: int | None = None) -> None:
    """Fail before any worker starts when a stage's global batch cannot be split over ``world_size``
    (default ``run.num_workers``) workers; the error names every such stage and the values that work."""
    # run.num_workers=0 is Ray Train's local mode: the training function runs once, as world size 1.
    workers = max(1, cfg.run.num_workers) if world_size is None else world_size
    _check_positive("world_size", workers)
    problems = [p for p in (stage.batch_problem(workers) for stage in cfg.train.stages) if p]
    if problems:
        raise ConfigError("batch arithmetic (global_batch = micro_batch x accumulation x workers):\n  "
                          + "\n  ".join(problems))


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config from ``Config.to_dict()`` (e.g. inside a Ray worker)."""
    return from_dict(Config, copy.deepcopy(data))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict to dotted keys (for MLflow params and Tune spaces)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                out.update(flatten(item, f"{dotted}.{i}."))
        else:
            out[dotted] = value
    return out
