"""``python -m lmms_eval`` that exits non-zero when the evaluation fails.

    python -m vlsa.eval.lmms_eval_run --model vlsa --model_args pretrained=EXPORT --tasks pope --output_path OUT

takes lmms-eval's own arguments. lmms-eval 0.7.3 catches any error of an evaluation (a task that
does not load, a model that fails), prints it and exits 0, so a script or CI job cannot tell a failed
run from a good one. This runs lmms-eval's CLI unchanged and exits 1 when an evaluation raised, or
when a run that should write results (rank 0 with ``--output_path``) wrote no results file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from vlsa.eval.lmms_eval_adapter import require_lmms_eval

RESULTS_GLOB = "**/*_results.json"


def _recording(evaluate_one, failures: list):
    """lmms-eval's per-run function, noting each error it raises before lmms-eval swallows it."""

    def run(args):
        try:
            return evaluate_one(args)
        except BaseException as err:
            failures.append(err)
            raise

    return run


def output_path(argv: list[str]) -> str:
    """The value of ``--output_path`` (``--output_path X`` or ``--output_path=X``), or ""."""
    for i, arg in enumerate(argv):
        if arg == "--output_path" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--output_path="):
            return arg.split("=", 1)[1]
    return ""


def new_results(root: str, since: float) -> list[Path]:
    """Results files under ``root`` written at or after ``since`` (epoch seconds)."""
    base = Path(root)
    return [p for p in base.glob(RESULTS_GLOB) if p.stat().st_mtime >= since] if base.exists() else []


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    require_lmms_eval()
    import torch.distributed as dist
    from lmms_eval import __main__ as lmms_main

    failures: list[BaseException] = []
    lmms_main.cli_evaluate_single = _recording(lmms_main.cli_evaluate_single, failures)
    started = time.time() - 1  # file times may be coarser than the clock
    sys.argv = [sys.argv[0], *argv]
    lmms_main.cli_evaluate()
    if failures:
        print(f"lmms-eval failed: {type(failures[0]).__name__}: {failures[0]}", file=sys.stderr)
        return 1
    rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    out = output_path(argv)
    if out and rank0 and not new_results(out, started):
        print(f"lmms-eval wrote no results file under {out}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
