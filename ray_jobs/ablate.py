"""Run a named ablation grid (``tune_spaces.GRIDS``) as a sweep and write its table (Markdown + CSV).

    python ray_jobs/ablate.py --grid tab5 --config C [--out DIR] [--only LABEL ...] [key=value ...]
    ray job submit -- python ray_jobs/ablate.py --grid tab4 --config C

Writes ``<DIR>/<grid>.md`` and ``<DIR>/<grid>.csv`` and logs both to the sweep's MLflow run, with this
command. Re-running the same command continues an interrupted ablation: finished variants are not trained again.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from tune_spaces import GRIDS
from vlsa.config import load_config
from vlsa.ray_session import add_num_cpus_argument, ray_session
from vlsa.tune.ablate import run_ablation

PROGRAM = "python ray_jobs/ablate.py"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, choices=sorted(GRIDS))
    parser.add_argument("--config", default="tiny", help="preset name or YAML path (default: tiny)")
    parser.add_argument("--out", default="ablations", help="folder of the Markdown and CSV tables")
    parser.add_argument("--only", action="append", default=[], metavar="LABEL",
                        help="run only this variant (repeatable; default: every variant of the grid)")
    parser.add_argument("--name", default="", help="sweep name (default: <run.name>-<grid>)")
    add_num_cpus_argument(parser)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.stages.0.max_steps=10")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The command line; prints where the tables went as one JSON line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    with ray_session(args.num_cpus):
        summary = run_ablation(cfg, args.grid, GRIDS[args.grid](cfg), args.out, only=args.only, name=args.name,
                               command=shlex.join([*PROGRAM.split(), *argv]))
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


if __name__ == "__main__":
    from vlsa.tune.sweep import SweepInterrupted

    try:
        sys.exit(1 if main()["failed"] else 0)
    except SweepInterrupted as err:  # Ctrl+C: the state is saved, say how to continue
        sys.exit(f"interrupted: {err}")
