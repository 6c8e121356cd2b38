"""The demo data of the embedded default, ready to train on: generated, and labelled by the Ray Data job.

Shared by the embedded default run (``vlsa.recipes.demo``) and the ablation tables run on its data
(``python -m vlsa.tune.ablate``). Needs Ray: the labeling runs on Ray Data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vlsa.config import Config
from vlsa.data.demo import DRAWING, DemoPaths, drawing_spec, generate_demo
from vlsa.data.demo_tower import pretrained_tower
from vlsa.labels.pipeline import run_labeling
from vlsa.labels.schema import label_identity

DEMO_RUN = ("run.num_workers=2", "run.cpus_per_worker=1", "demo.min_side=56", "demo.max_side=64",
            "demo.train_images=1200")
"""How the embedded default runs: two single-CPU workers (data-parallel ZeRO over gloo) use a 2-core
laptop better than one worker whose PyTorch Ray limits to one thread; images of 56-64 px, so every
image fills a 2x2 grid of tiles with little padding (a drawing is 18-26 px across in the tiles) and
the position words mean the same place of the padded canvas in every image; 1,200 training images
seen twice rather than 600 seen four times (the same steps): position rose from 0.43-0.50 to 0.90
(README, "Shape, count and position")."""


def labels_dir(cfg: Config, root: Path, data_file: str) -> str:
    """Labels of one data file, in a folder named by what the labels depend on: the label models and the
    drawn images (so a changed tokenizer-free config reuses them, and a changed VQ/VAE config or demo
    drawing, which redraws the images in place, does not)."""
    depends = {"labels": label_identity(cfg), "demo": drawing_spec(cfg.demo), "drawing": DRAWING, "seed": cfg.train.seed}
    key = hashlib.sha256(json.dumps(depends, sort_keys=True).encode()).hexdigest()[:10]
    return str(root / "labels" / f"{Path(data_file).stem}-{key}")


def prepare_demo(cfg: Config, root: Path) -> tuple[Config, DemoPaths]:
    """Generate the demo data, label the files of stages with SSFT turns, point every stage at its data
    and ``eval`` at the held-out split.

    Returns (config with data paths, ``DemoPaths``).
    """
    paths = generate_demo(cfg.demo, root, seed=cfg.train.seed)
    overrides = {"eval.data": cfg.eval.data or paths.eval, "eval.image_root": cfg.eval.image_root or paths.image_root}
    tower = pretrained_tower(cfg, root)
    if tower:
        overrides["model.vision.path"] = tower
    for i, stage in enumerate(cfg.train.stages):
        data, key = stage.data, f"train.stages.{i}.data"
        train, image_root = data.train or paths.train_file(data.template), data.image_root or paths.image_root
        overrides |= {f"{key}.train": train, f"{key}.image_root": image_root}
        if not data.labels and (data.ssft.p_vq > 0 or data.ssft.p_px > 0):
            overrides[f"{key}.labels"] = labels_dir(cfg, root, train)
            run_labeling(cfg, train, image_root, overrides[f"{key}.labels"])
    return cfg.with_overrides(overrides), paths
