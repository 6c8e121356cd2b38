"""Evaluate a model on a benchmark question file: Ray Data batch inference, scores logged to MLflow.

    python ray_jobs/evaluate.py --model DIR [--questions FILE --image-root DIR] [--gt FILE --benchmark NAME]
    ray job submit -- python ray_jobs/evaluate.py --model s3://.../export --questions s3://... ...

``--model`` is an exported inference folder or a stage-end training checkpoint (then ``--config``
names the run's config). Without ``--questions`` (and no ``eval.data`` in the config) the generated
demo's held-out split is answered and scored. Answers go to ``--answers`` (default
``<run.storage_path>/<run.name>/eval/<benchmark>-answers.jsonl``) in the LLaVA answer-file format.
"""

from __future__ import annotations

import argparse
import json

from vlsa.config import load_config
from vlsa.eval.batch import demo_split, evaluate
from vlsa.io import storage
from vlsa.ray_session import add_num_cpus_argument, ray_session


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="exported model folder or training checkpoint (local or s3://)")
    parser.add_argument("--questions", default="", help="LLaVA question file (default: eval.data, else the demo split)")
    parser.add_argument("--image-root", default="", help="image folder or s3:// prefix (default: eval.image_root)")
    parser.add_argument("--answers", default="", help="answer file to write (local or s3://)")
    parser.add_argument("--gt", default="", help="ground truth in the benchmark's official format")
    parser.add_argument("--benchmark", default="", help="scorer name (python -m vlsa.eval.score --list)")
    parser.add_argument("--config", default="tiny", help="preset name or YAML path (default: tiny)")
    add_num_cpus_argument(parser)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. eval.batch_size=16")
    return parser.parse_args(argv)


def inputs(args: argparse.Namespace, cfg) -> dict[str, str]:
    """Question file, image root, ground truth and benchmark from the flags, the config or the demo."""
    questions = args.questions or cfg.eval.data
    if not questions:
        return demo_split(cfg)
    return {"questions": questions, "image_root": args.image_root or cfg.eval.image_root,
            "ground_truth": args.gt, "benchmark": args.benchmark}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    job = inputs(args, cfg)
    answers = args.answers or storage.join(cfg.run.storage_path, cfg.run.name, "eval",
                                           f"{job['benchmark'] or 'questions'}-answers.jsonl")
    with ray_session(args.num_cpus):
        summary = evaluate(cfg, args.model, job["questions"], job["image_root"], answers,
                           ground_truth=job["ground_truth"], benchmark=job["benchmark"])
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


if __name__ == "__main__":
    main()
