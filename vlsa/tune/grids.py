"""Named ablation grids: Tab. 4 (the components of VLSA) and Tab. 5 (the SSFT objectives).

A grid is ``{row label: {dotted path: value}}`` built from the base config, so a row that turns
reconstruction off also stops training the denoiser and Epigone, and the rows run on whatever preset
the user picked. Tab. 4's rows also name the row each is compared with in the paper (Sec. 4.2):
(2) vs (1), (3) vs (2), (4) vs (3), (5) vs (1), (6) vs (4); each differs from that row in one
component only (checked by the tests on the resolved configs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from vlsa.config import Config
from vlsa.tune.points import stage_key

RECON_MODULES = ("epigone", "denoiser")
DEFAULT_P = 0.3
"""Insertion probability of an enabled SSFT task when the base config gives none."""


@dataclass(frozen=True)
class Row:
    """One row of an ablation table."""

    point: dict[str, Any]
    """The row's dotted overrides."""
    compared_with: str = ""
    """Label of the row this one adds (or removes) one component to (empty: a reference row)."""
    component: str = ""
    """That component: ``resolution``, ``compressive encoding``, ``reconstruction`` or ``cognition alignment``."""


def ssft_stages(cfg: Config) -> list[int]:
    """Indices of the stages whose data get SSFT turns (the instruction stages; else the last stage)."""
    used = [i for i, s in enumerate(cfg.train.stages) if s.data.ssft.p_vq > 0 or s.data.ssft.p_px > 0]
    return used or [len(cfg.train.stages) - 1]


def ssft_probabilities(cfg: Config, pixels: bool, vq: bool) -> dict[str, float]:
    """The SSFT stages' pixel / VQ turn probabilities: the base config's (or ``DEFAULT_P``) when on, 0 when off."""
    out = {}
    for i in ssft_stages(cfg):
        ssft = cfg.train.stages[i].data.ssft
        out[stage_key(i, "data.ssft.p_px")] = (ssft.p_px or DEFAULT_P) if pixels else 0.0
        out[stage_key(i, "data.ssft.p_vq")] = (ssft.p_vq or DEFAULT_P) if vq else 0.0
    return out


def stage_lrs(cfg: Config, recon: bool) -> dict[str, Any]:
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
            | stage_lrs(cfg, recon) | ssft_probabilities(cfg, ssft, ssft))


BASELINE, LOW_RES, PLUS_A, PLUS_AB, PLUS_C, FULL = (
    "(1) baseline (AnyRes)", "(2) low resolution", "(3) +a compressive encoding", "(4) +ab reconstruction",
    "(5) +c cognition alignment", "(6) +abc full VLSA")


def tab4_rows(cfg: Config) -> dict[str, Row]:
    """Tab. 4: (a) compressive encoding, (b) reconstructive training, (c) cognition alignment.

    The low-resolution row is LLaVA's MLP over the low-resolution view alone (no tiles).
    """
    return {
        BASELINE: Row(_variant(cfg, "anyres", False, False)),
        LOW_RES: Row(_variant(cfg, "mlp2x_gelu", False, False), BASELINE, "resolution"),
        PLUS_A: Row(_variant(cfg, "sa_perceiver", False, False), LOW_RES, "compressive encoding"),
        PLUS_AB: Row(_variant(cfg, "sa_perceiver", True, False), PLUS_A, "reconstruction"),
        PLUS_C: Row(_variant(cfg, "anyres", False, True), BASELINE, "cognition alignment"),
        FULL: Row(_variant(cfg, "sa_perceiver", True, True), PLUS_AB, "cognition alignment"),
    }


def tab4(cfg: Config) -> dict[str, dict[str, Any]]:
    """Tab. 4's rows as grid points."""
    return {label: row.point for label, row in tab4_rows(cfg).items()}


def tab5(cfg: Config) -> dict[str, dict[str, Any]]:
    """Tab. 5: pixel-value and codebook-index SSFT objectives on/off (on the full VLSA model)."""
    rows = {"pixels off, indices off": (False, False), "pixels off, indices on": (False, True),
            "pixels on, indices off": (True, False), "pixels on, indices on": (True, True)}
    return {label: ssft_probabilities(cfg, px, vq) for label, (px, vq) in rows.items()}


GRIDS: dict[str, Callable[[Config], dict[str, dict[str, Any]]]] = {"tab4": tab4, "tab5": tab5}
"""The named ablation grids."""
