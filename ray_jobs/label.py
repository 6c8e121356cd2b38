"""Label a LLaVA dataset: VQ-VAE indices per quarter, pixel targets and VAE latents, as Parquet shards.

    python ray_jobs/label.py --data FILE --image-root DIR --output OUT [--config C] [key=value ...]
    ray job submit -- python ray_jobs/label.py --data s3://... --image-root s3://... --output s3://...

Paths may be local or ``s3://``. Under ``ray job submit`` (``RAY_ADDRESS`` set) the job joins that
cluster; otherwise it starts a local Ray instance. Re-running skips completed shards.
"""

from __future__ import annotations

import argparse
import json
import logging

from vlsa.config import load_config
from vlsa.labels.pipeline import run_labeling
from vlsa.ray_session import add_num_cpus_argument, ray_session


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="LLaVA JSON / JSONL file (local or s3://)")
    parser.add_argument("--image-root", required=True, help="folder or s3:// prefix the image paths are under")
    parser.add_argument("--output", required=True, help="output folder or s3:// prefix")
    parser.add_argument("--config", default="tiny", help="preset name or YAML path (default: tiny)")
    parser.add_argument("--allow-duplicate-ids", action="store_true",
                        help="skip and count records whose id repeats an earlier one (default: an error)")
    add_num_cpus_argument(parser)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. label.batch_size=32")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = load_config(args.config, args.overrides)  # a bad config fails before Ray starts
    with ray_session(args.num_cpus):
        summary = run_labeling(cfg, args.data, args.image_root, args.output,
                               allow_duplicate_ids=args.allow_duplicate_ids)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


if __name__ == "__main__":
    main()
