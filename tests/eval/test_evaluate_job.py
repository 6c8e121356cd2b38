"""ray_jobs/evaluate.py end to end on the demo held-out split: Ray Data actors, answer file, scores, MLflow."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from vlsa.eval.batch import pool_size
from vlsa.eval.infer import read_questions
from vlsa.eval.scorers._common import read_answer_file

DEMO_EVAL_IMAGES = 4  # 3 questions each
JOB = Path(__file__).resolve().parents[2] / "ray_jobs" / "evaluate.py"


def _job_module():
    spec = importlib.util.spec_from_file_location("evaluate_job", JOB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pool_size_follows_the_cluster():
    assert pool_size({"CPU": 4.0}, num_batches=10) == (3, 0.0)  # one CPU left for Ray Data
    assert pool_size({"CPU": 4.0}, num_batches=2) == (2, 0.0)  # never more actors than batches
    assert pool_size({"CPU": 1.0}, num_batches=5) == (1, 0.0)
    assert pool_size({"CPU": 16.0, "GPU": 2.0}, num_batches=10) == (2, 1.0)  # one GPU per actor
    assert pool_size({"CPU": 16.0}, num_batches=10, configured=5) == (5, 0.0)


def test_job_needs_both_ground_truth_and_benchmark(tmp_path):
    from vlsa import load_config
    from vlsa.eval.batch import evaluate

    with pytest.raises(ValueError, match="both a ground truth and a benchmark"):
        evaluate(load_config("tiny"), "m", "q.jsonl", "", str(tmp_path / "a.jsonl"), benchmark="demo")


@pytest.mark.integration
def test_evaluate_demo_split_through_ray(exported_model, cache_dir, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from vlsa.io import tracking

    monkeypatch.chdir(tmp_path)  # the default MLflow store ./mlruns and run storage land here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    overrides = [f"model.cache_dir={cache_dir}", "demo.train_images=2", f"demo.eval_images={DEMO_EVAL_IMAGES}",
                 "eval.batch_size=6", "eval.num_actors=1", "eval.max_new_tokens=3", "run.name=eval-test"]
    summary = _job_module().main(["--model", exported_model, "--num-cpus", "4", *overrides])

    demo_eval = Path(cache_dir) / "demo" / "eval.jsonl"
    questions = read_questions(str(demo_eval))
    answers = read_answer_file(summary["answers"])
    assert Path(summary["answers"]) == tmp_path / "runs" / "eval-test" / "eval" / "demo-answers.jsonl"
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]  # all, in order
    assert all(a["model_id"] == "tiny-vlsa" and "error" not in a["metadata"] for a in answers)
    metrics = summary["metrics"]
    assert metrics["n"] == len(questions) == 3 * DEMO_EVAL_IMAGES and 0.0 <= metrics["accuracy"] <= 1.0

    client = MlflowClient(tracking_uri=tracking.tracking_uri(""))  # the default local store under ./mlruns
    assert (tmp_path / "mlruns").is_dir()
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["vlsa.kind"] == "eval"
    assert run.data.metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.params["benchmark"] == "demo" and run.data.params["num_questions"] == str(len(questions))
    assert [a.path for a in client.list_artifacts(run.info.run_id, "eval")] == ["eval/demo-answers.jsonl"]
