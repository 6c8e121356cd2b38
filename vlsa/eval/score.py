"""Score a LLaVA-format answer file against a benchmark's official annotations.

    python -m vlsa.eval.score --benchmark vqav2 --pred answers.jsonl --gt v2_mscoco_val2014_annotations.json

prints one JSON object of metrics (accuracies as fractions in [0, 1]; MME's totals are the official
points). ``--list`` names every benchmark and the ground-truth format it reads. Every ground-truth
question needs an answer unless ``--partial`` is given; an answer to a question the ground truth
does not have is always an error. Paths may be local or ``s3://``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Iterable

from vlsa.eval import scorers
from vlsa.eval.scorers._common import ScoreError, check_answers, read_answer_file

# A scorer meeting a ground-truth file of the wrong shape fails on a missing field or a wrong type;
# these are reported as format errors instead of tracebacks.
_FORMAT_ERRORS = (KeyError, TypeError, AttributeError, IndexError, ValueError)


def score(
    benchmark: str,
    predictions: str | os.PathLike | Iterable[dict],
    ground_truth: Any,
    *,
    partial: bool = False,
    **options: Any,
) -> dict:
    """Metrics of ``predictions`` (answer-file path or answer records) on ``benchmark``.

    ``ground_truth`` is a path to the benchmark's official annotations, or those annotations
    already parsed (what the benchmark's ``read`` returns, e.g. the loaded JSON).
    """
    bench = scorers.get(benchmark)
    unknown = sorted(set(options) - set(bench.options))
    if unknown:
        raise ScoreError(f"{benchmark}: unknown option(s) {unknown}; it accepts {list(bench.options) or 'none'}")
    answers = _answers(benchmark, predictions)
    gt = bench.read(os.fspath(ground_truth)) if isinstance(ground_truth, (str, os.PathLike)) else ground_truth
    try:
        return bench.evaluate(answers, gt, partial=partial, **options)
    except ScoreError:
        raise
    except _FORMAT_ERRORS as err:
        raise ScoreError(
            f"{benchmark}: ground truth is not in the expected format ({bench.gt_format}): "
            f"{type(err).__name__}: {err}"
        ) from err


def _answers(benchmark: str, predictions: str | os.PathLike | Iterable[dict]) -> list[dict]:
    if isinstance(predictions, (str, os.PathLike)):
        answers = read_answer_file(os.fspath(predictions))
    else:
        answers = check_answers(predictions)
    if not answers:
        raise ScoreError(f"{benchmark}: there are no answers to score")
    return answers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlsa.eval.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", help="benchmark name (see --list)")
    parser.add_argument("--pred", help="answer file: LLaVA answer-format JSONL")
    parser.add_argument("--gt", help="ground truth in the benchmark's official format")
    parser.add_argument("--split", help="split to score, for benchmarks that have one (ScienceQA; default test)")
    parser.add_argument("--partial", action="store_true", help="score only the answered questions")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and their ground-truth formats")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print the metrics as one JSON object; exit 2 with a message on bad input."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        for name in scorers.names():
            print(f"{name}: {scorers.get(name).gt_format}")
        return 0
    if not (args.benchmark and args.pred and args.gt):
        parser.error("--benchmark, --pred and --gt are required")
    options = {} if args.split is None else {"split": args.split}
    try:
        metrics = score(args.benchmark, args.pred, args.gt, partial=args.partial, **options)
    except ScoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
