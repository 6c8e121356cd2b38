"""Run (or continue) a hyper-parameter sweep: each trial is a full training run.

    python ray_jobs/tune.py --space loss_ratio --config C [key=value ...]
    ray job submit -- python ray_jobs/tune.py --space ssft_mix --config C tune.scheduler=asha

Spaces and grids are listed in ``tune_spaces``; ``--only LABEL`` keeps some points of a named grid.
Re-running the same command (same ``--name``) restores an interrupted sweep: finished trials are kept.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from tune_spaces import GRIDS, SPACES, build_space
from vlsa.config import check_batches, load_config
from vlsa.ray_session import add_num_cpus_argument, ray_session


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", required=True, choices=sorted(SPACES) + sorted(GRIDS))
    parser.add_argument("--config", default="tiny", help="preset name or YAML path (default: tiny)")
    parser.add_argument("--name", default="", help="sweep name (default: <run.name>-<space>)")
    parser.add_argument("--only", action="append", default=[], metavar="LABEL",
                        help="run only this point of a named grid (repeatable; default: every point)")
    add_num_cpus_argument(parser)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. tune.metric=loss_lm")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    check_batches(cfg)  # before Ray starts; each point of the space is checked again before any trial
    space = build_space(args.space, cfg, args.only)
    from vlsa.tune.sweep import run_sweep

    with ray_session(args.num_cpus):
        outcome = run_sweep(cfg, space, args.name or f"{cfg.run.name}-{args.space}",
                            command=shlex.join(["python", "ray_jobs/tune.py", *argv]))
    summary = {"path": outcome.path, "mlflow_run_id": outcome.run_id, "best": outcome.best_point,
               "failed": len(outcome.results.errors), cfg.tune.metric: outcome.best_metrics.get(cfg.tune.metric)}
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)
    return summary


if __name__ == "__main__":
    from vlsa.tune.sweep import SweepInterrupted

    try:
        main()
    except SweepInterrupted as err:  # Ctrl+C: the state is saved, say how to continue
        sys.exit(f"interrupted: {err}")
