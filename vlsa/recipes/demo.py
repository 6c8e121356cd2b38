"""The embedded default run: what ``python ray_jobs/train.py`` does with no config.

It generates the demo dataset, labels it (VQ indices, pixel targets, VAE latents) with the labeling
pipeline, trains Stage I then Stage II of the ``tiny`` preset on the local Ray instance, answers
the held-out questions greedily and scores them against the best image-blind policy (the most
frequent training answer per question type). Everything lands in the working directory:
``demo_data/``, ``runs/`` (checkpoints) and ``mlruns/`` (MLflow).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Iterable

from vlsa.config import Config, load_config
from vlsa.data.demo import generate_demo
from vlsa.eval.demo import evaluate
from vlsa.io import tracking
from vlsa.labels.pipeline import run_labeling
from vlsa.labels.schema import label_identity
from vlsa.train.driver import train

DEMO_DIR = "demo_data"
# Two single-CPU workers (data-parallel ZeRO over gloo) use a 2-core laptop better than one worker
# whose PyTorch Ray limits to one thread; given first, so command-line overrides win.
DEFAULT_OVERRIDES = ("run.num_workers=2", "run.cpus_per_worker=1")


def labels_dir(cfg: Config, root: Path, data_file: str) -> str:
    """Labels of one data file, in a folder named by what the labels depend on (so a changed
    tokenizer-free config reuses them and a changed VQ/VAE config does not)."""
    key = hashlib.sha256(json.dumps(label_identity(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return str(root / "labels" / f"{Path(data_file).stem}-{key}")


def prepare_data(cfg: Config, root: Path):
    """Generate the demo data, label the files of stages with SSFT turns, point every stage at its data.

    Returns (config with data paths, ``DemoPaths``). Needs Ray (the labeling runs on Ray Data).
    """
    paths = generate_demo(cfg.demo, root, seed=cfg.train.seed)
    overrides = {}
    for i, stage in enumerate(cfg.train.stages):
        data, key = stage.data, f"train.stages.{i}.data"
        train, image_root = data.train or paths.train_file(data.template), data.image_root or paths.image_root
        overrides |= {f"{key}.train": train, f"{key}.image_root": image_root}
        if not data.labels and (data.ssft.p_vq > 0 or data.ssft.p_px > 0):
            overrides[f"{key}.labels"] = labels_dir(cfg, root, train)
            run_labeling(cfg, train, image_root, overrides[f"{key}.labels"])
    return cfg.with_overrides(overrides), paths


def log_evaluation(outcome, result: dict, seconds: dict[str, float]) -> None:
    """Held-out metrics and the answer file on the job's MLflow run."""
    metrics = {"eval_accuracy": result["model"]["accuracy"], "eval_blind_accuracy": result["blind"]["accuracy"]}
    metrics |= {f"eval_accuracy/{kind}": acc for kind, acc in result["model"]["per_type"].items()}
    metrics |= {f"seconds/{name}": value for name, value in seconds.items()}
    client = tracking.client(outcome.tracking_uri)
    for key, value in metrics.items():
        client.log_metric(outcome.mlflow_run_id, key, float(value))
    client.log_text(outcome.mlflow_run_id, "".join(json.dumps(r) + "\n" for r in result["answers"]),
                    "eval/demo-answers.jsonl")
    client.log_dict(outcome.mlflow_run_id, result["blind"]["policy"], "eval/blind-policy.json")


def report(outcome, result: dict, seconds: dict[str, float]) -> str:
    """What the run prints at the end."""
    model, blind = result["model"]["accuracy"], result["blind"]["accuracy"]
    per_type = ", ".join(f"{k} {v:.2f}" for k, v in sorted(result["model"]["per_type"].items()))
    store = outcome.tracking_uri
    ui = f"mlflow ui --backend-store-uri {store}" if not store.startswith("http") else f"open {store}"
    return "\n".join([
        f"held-out accuracy {model:.3f} (image-blind baseline {blind:.3f}, margin {model - blind:+.3f}); {per_type}",
        f"final checkpoint: {outcome.final_checkpoint}",
        f"MLflow run {outcome.mlflow_run_id}: {ui}",
        "time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()),
    ])


def main(overrides: Iterable[str] = (), root: str | Path = DEMO_DIR) -> dict:
    """Run the embedded default on the current Ray instance; returns the numbers it printed."""
    start = time.perf_counter()
    cfg, paths = prepare_data(load_config("tiny", [*DEFAULT_OVERRIDES, *overrides]), Path(root).resolve())
    prepared = time.perf_counter()
    outcome = train(cfg)
    trained = time.perf_counter()
    result = evaluate(cfg, outcome.final_checkpoint, paths)
    seconds = {"data": prepared - start, "train": trained - prepared, "eval": time.perf_counter() - trained}
    seconds["total"] = time.perf_counter() - start
    log_evaluation(outcome, result, seconds)
    print(report(outcome, result, seconds), flush=True)
    return {"eval_accuracy": result["model"]["accuracy"], "eval_blind_accuracy": result["blind"]["accuracy"],
            "final_checkpoint": outcome.final_checkpoint, "mlflow_run_id": outcome.mlflow_run_id,
            "tracking_uri": outcome.tracking_uri, "seconds": seconds}
