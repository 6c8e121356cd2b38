"""Per-stage freezing and optimizer parameter groups (Tab. 7).

A stage names its trainable modules and their learning rates in ``StageConfig.lr`` (module names
``vision``, ``projector``, ``llm``, ``epigone``, ``denoiser``); every module not named is frozen.
The frozen VAE (and the VQ-VAE, which is never part of the model) are never trainable.
"""

from __future__ import annotations

from torch import nn

from vlsa.config import StageConfig


def stage_modules(model) -> dict[str, nn.Module]:
    """The trainable-unit modules of a ``VLSAModel`` by stage name (the recon parts only when present)."""
    modules = {"vision": model.vision_tower, "projector": model.projector, "llm": model.language_model}
    if model.recon_head is not None:
        modules |= model.recon_head.trainable_parts()
    return modules


def is_pretraining(stage: StageConfig) -> bool:
    """An alignment stage: the LLM stays frozen (where VDEP applies, on doubled data)."""
    return "llm" not in stage.lr


def freeze_for_stage(model, stage: StageConfig) -> None:
    """requires_grad = True exactly for the modules named in ``stage.lr``."""
    modules = stage_modules(model)
    missing = sorted(set(stage.lr) - set(modules))
    if missing:
        raise ValueError(f"stage {stage.name} trains {missing}, which this model does not have (has {sorted(modules)})")
    model.requires_grad_(False)
    for name in stage.lr:
        modules[name].requires_grad_(True)
    if model.recon_head is not None:
        model.recon_head.vae.requires_grad_(False)


def param_groups(model, stage: StageConfig) -> list[dict]:
    """Optimizer groups ``[{"name", "params", "lr", "weight_decay"}]``, one per trainable module of the stage."""
    modules = stage_modules(model)
    groups = []
    for name, lr in stage.lr.items():
        params = [p for p in modules[name].parameters() if p.requires_grad]
        if params:
            groups.append({"name": name, "params": params, "lr": lr, "weight_decay": stage.weight_decay})
    return groups


def apply_stage(model, stage: StageConfig) -> list[dict]:
    """Freeze for ``stage``, set its loss weights and pre-training flag, return its param groups.

    A stage that leaves the LLM frozen is a pre-training (alignment) stage: the one where VDEP is
    applied, with the data doubled: each sample once in VDEP mode and once in plain mode.
    """
    freeze_for_stage(model, stage)
    model.set_loss_weights(stage.w_lm, stage.w_rec, pretraining=is_pretraining(stage))
    return param_groups(model, stage)
