"""The embedded default run: what ``python ray_jobs/train.py`` does with no config.

It generates the demo dataset, labels it (VQ indices, pixel targets, VAE latents) with the labeling
pipeline, trains Stage I then Stage II of the ``tiny`` preset on the local Ray instance, answers
the held-out questions greedily and scores them against the best image-blind policy (the most
frequent training answer per question type). Everything lands in the working directory:
``demo_data/``, ``runs/`` (checkpoints) and ``mlruns/`` (MLflow).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable

from vlsa.config import load_config
from vlsa.data.demo_setup import DEMO_RUN, prepare_demo
from vlsa.eval.demo import evaluate
from vlsa.io import tracking
from vlsa.train.driver import train

DEMO_DIR = "demo_data"
# Given first, so command-line overrides win.
DEFAULT_OVERRIDES = DEMO_RUN


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
    cfg, paths = prepare_demo(load_config("tiny", [*DEFAULT_OVERRIDES, *overrides]), Path(root).resolve())
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
