"""Named ablation grids: Tab. 4 (components of VLSA) and Tab. 5 (SSFT objectives).

Each grid is a mapping ``{row label: {dotted path: value}}`` built from the base config, so a
variant that turns reconstruction off also stops training the denoiser and Epigone, and the rows
run on whatever preset the user picked.
"""

from __future__ import annotations

from typing import Any

from tune_spaces import ssft_mix
from vlsa.config import Config
from vlsa.tune.points import stage_key

RECON_MODULES = ("epigone", "denoiser")


def _stage_lrs(cfg: Config, recon: bool) -> dict[str, Any]:
    """Every stage's lr dict, with the reconstruction modules trained only when ``recon``."""
    out = {}
    for i, stage in enumerate(cfg.train.stages):
        lrs = {k: v for k, v in stage.lr.items() if k not in RECON_MODULES}
        if recon and "projector" in lrs:  # the heads learn with the projector, as Tab. 7
            lrs |= {m: stage.lr.get(m, lrs["projector"]) for m in RECON_MODULES}
        out[stage_key(i, "lr")] = lrs
    return out


def _variant(cfg: Config, projector: str, recon: bool, ssft: bool) -> dict[str, Any]:
    return ({"model.projector.type": projector, "model.recon.enabled": recon}
            | _stage_lrs(cfg, recon) | ssft_mix._probabilities(cfg, ssft, ssft))


def tab4(cfg: Config) -> dict[str, dict[str, Any]]:
    """Tab. 4: (a) compressive encoding, (b) reconstructive training, (c) cognition alignment."""
    return {
        "(1) baseline (AnyRes)": _variant(cfg, "anyres", False, False),
        "(2) low resolution": _variant(cfg, "mlp2x_gelu", False, False),
        "(3) +a compressive encoding": _variant(cfg, "sa_perceiver", False, False),
        "(4) +ab reconstruction": _variant(cfg, "sa_perceiver", True, False),
        "(5) +c cognition alignment": _variant(cfg, "anyres", False, True),
        "(6) +abc full VLSA": _variant(cfg, "sa_perceiver", True, True),
    }


def tab5(cfg: Config) -> dict[str, dict[str, Any]]:
    """Tab. 5: pixel-value and codebook-index SSFT objectives on/off (on the full VLSA model)."""
    rows = {"pixels off, indices off": (False, False), "pixels off, indices on": (False, True),
            "pixels on, indices off": (True, False), "pixels on, indices on": (True, True)}
    return {label: ssft_mix._probabilities(cfg, px, vq) for label, (px, vq) in rows.items()}
