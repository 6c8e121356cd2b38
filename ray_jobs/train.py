"""Train VLSA on Ray Train + DeepSpeed: Stage I then Stage II (or the stages of the config).

    python ray_jobs/train.py                                  # the embedded default (tiny, demo data)
    python ray_jobs/train.py --config C [key=value ...]       # a config: preset name or YAML path
    ray job submit --working-dir . -- python ray_jobs/train.py --config C [key=value ...]

Without ``--config`` the embedded default runs (``key=value`` overrides apply to it): demo data is
generated and labelled, both tiny stages train, and the held-out accuracy is printed. Under
``ray job submit`` (``RAY_ADDRESS`` set) the job joins that cluster; otherwise it starts a local Ray
instance. A re-run with the same ``run.name`` continues from the newest complete checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from vlsa.config import check_batches, load_config
from vlsa.ray_session import add_num_cpus_argument, ray_session


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="preset name or YAML path (default: the embedded default run)")
    add_num_cpus_argument(parser)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.stages.0.max_steps=10")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = load_config(args.config, args.overrides) if args.config else None
    if cfg is not None:  # before Ray starts: a batch that cannot be split fails here, not in every worker
        check_batches(cfg)
    if cfg is None:  # the embedded default builds tiny models only: never reach for the hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with ray_session(args.num_cpus):
        if cfg is None:
            from vlsa.recipes.demo import main as default_run

            return default_run(args.overrides)
        from vlsa.train.driver import train

        outcome = train(cfg)
    summary = {"final_checkpoint": outcome.final_checkpoint, "mlflow_run_id": outcome.mlflow_run_id,
               "tracking_uri": outcome.tracking_uri, "run": outcome.run}
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


if __name__ == "__main__":
    main()
