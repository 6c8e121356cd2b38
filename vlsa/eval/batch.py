"""Batch evaluation on Ray: Ray Data actors holding the model answer a question file; scores to MLflow.

The driver reads the question file (local or ``s3://``) and hands each question to Ray Data as one
JSON string, so question ids keep their type (int or str) through Arrow. ``map_batches`` runs
:class:`AnswerActor` in an ``ActorPoolStrategy`` pool: one actor per GPU, or without GPUs the
cluster's CPUs minus one (left for Ray Data's own tasks), never more actors than batches. Each actor
loads the model once. The answers come back in question order and are written in the LLaVA
answer-file format; with a ground truth and a benchmark name they are scored with
``vlsa.eval.score``. The run (params, metrics, answer file) is logged to MLflow.

Ray is imported inside the functions that use it, so importing this module stays light.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from vlsa.config import Config, config_from_dict
from vlsa.data.demo import generate_demo
from vlsa.eval.infer import Answerer, answer_batch, load_model, model_id_of, read_questions, write_answers
from vlsa.eval.score import score
from vlsa.eval.scorers._common import flatten_metrics
from vlsa.io import storage, tracking


def pool_size(resources: dict[str, float], num_batches: int, configured: int = 0) -> tuple[int, float]:
    """(actors, GPUs per actor) for the cluster's ``resources`` (as ``ray.cluster_resources()`` gives)."""
    gpus = int(resources.get("GPU", 0))
    if configured:
        actors = configured
    elif gpus:
        actors = gpus
    else:
        actors = max(1, int(resources.get("CPU", 1)) - 1)
    return max(1, min(actors, num_batches)), (1.0 if gpus else 0.0)


class AnswerActor:
    """A Ray Data actor: loads the model once, answers batches of JSON-encoded questions."""

    def __init__(self, config: dict, model_path: str, image_root: str) -> None:
        cfg: Config = config_from_dict(config)
        self.image_root, self.decode = image_root, cfg.label.decode
        self.answerer = Answerer(load_model(model_path, cfg), template=cfg.eval.template,
                                 max_new_tokens=cfg.eval.max_new_tokens, model_id=model_id_of(model_path))

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        questions = [json.loads(q) for q in batch["question"]]
        rows = answer_batch(self.answerer, questions, self.image_root, self.decode)
        return {"index": np.asarray(batch["index"]), "answer": np.array([json.dumps(r) for r in rows], dtype=object)}


def answer_on_ray(cfg: Config, model_path: str, questions: list[dict], image_root: str) -> list[dict]:
    """Answer rows for ``questions`` (in their order) from an actor pool sized to the running cluster."""
    import ray

    if not questions:
        raise ValueError("the question file has no questions")
    items = [{"index": i, "question": json.dumps(q)} for i, q in enumerate(questions)]
    actors, gpus = pool_size(ray.cluster_resources(), math.ceil(len(items) / cfg.eval.batch_size), cfg.eval.num_actors)
    answered = ray.data.from_items(items).map_batches(
        AnswerActor,
        fn_constructor_kwargs={"config": cfg.to_dict(), "model_path": model_path, "image_root": image_root},
        batch_size=cfg.eval.batch_size, compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus, num_cpus=1,
    ).take_all()
    if len(answered) != len(items):
        raise RuntimeError(f"Ray Data returned {len(answered)} answers for {len(items)} questions")
    return [json.loads(row["answer"]) for row in sorted(answered, key=lambda row: int(row["index"]))]


def log_to_mlflow(cfg: Config, run_name: str, params: dict[str, Any], metrics: dict, answers_uri: str) -> str:
    """One MLflow run with the eval params, flattened metrics and the answer file; returns its id."""
    from mlflow.entities import Metric, Param

    uri = tracking.tracking_uri(cfg.run.mlflow.tracking_uri)
    client = tracking.client(uri)
    exp_id = tracking.experiment_id(client, cfg.run.mlflow.experiment)
    run_id = client.create_run(exp_id, run_name=run_name, tags={"vlsa.kind": "eval"}).info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, tracking.redact(k, v)) for k, v in sorted(params.items())])
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(flatten_metrics(metrics).items())])
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(answers_uri.rstrip("/")).name
            local.write_bytes(storage.read_bytes(answers_uri))
            client.log_artifact(run_id, str(local), artifact_path="eval")
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def _absolute(uri: str) -> str:
    return uri if storage.is_s3(uri) else str(Path(uri).expanduser().resolve())


def evaluate(cfg: Config, model_path: str, questions_uri: str, image_root: str, answers_uri: str, *,
             ground_truth: str = "", benchmark: str = "") -> dict:
    """Answer a question file on Ray, write the answers, score them when a benchmark is named, log to MLflow."""
    if bool(ground_truth) != bool(benchmark):
        raise ValueError(f"give both a ground truth and a benchmark name, or neither (got gt={ground_truth!r}, "
                         f"benchmark={benchmark!r})")
    # actors may start in another working directory: hand them absolute local paths
    model_path, answers_uri = _absolute(model_path), _absolute(answers_uri)
    image_root = _absolute(image_root) if image_root else image_root
    rows = answer_on_ray(cfg, model_path, read_questions(questions_uri), image_root)
    write_answers(rows, answers_uri)
    metrics = score(benchmark, rows, ground_truth) if benchmark else {}
    params = {"model": model_path, "questions": questions_uri, "answers": answers_uri, "benchmark": benchmark,
              "num_questions": len(rows), **{f"eval.{k}": v for k, v in cfg.to_dict()["eval"].items()}}
    run_name = f"eval-{model_id_of(model_path)}" + (f"-{benchmark}" if benchmark else "")
    run_id = log_to_mlflow(cfg, run_name, params, metrics, answers_uri)
    return {"answers": answers_uri, "questions": len(rows), "metrics": metrics, "mlflow_run_id": run_id}


def demo_split(cfg: Config) -> dict[str, str]:
    """The generated demo's held-out split (made under ``model.cache_dir`` when missing) as job inputs."""
    paths = generate_demo(cfg.demo, Path(cfg.model.cache_dir).expanduser() / "demo", seed=cfg.train.seed)
    return {"questions": paths.eval, "image_root": paths.image_root, "ground_truth": paths.eval, "benchmark": "demo"}
