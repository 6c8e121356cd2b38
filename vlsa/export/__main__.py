"""Export a training checkpoint as an inference folder for transformers, vLLM, lmms-eval or this package.

    python -m vlsa.export --checkpoint CKPT --out DIR [--format auto|llava|llava_next|vlsa|package] \\
        [--config PRESET_OR_YAML] [--metrics FILE] [key=value ...]
    ray job submit -- python ray_jobs/export.py --checkpoint s3://.../02_stage2_step00001234 --out s3://.../export

``--checkpoint`` is a stage-end checkpoint (holding ``model.safetensors``) or a run folder (its newest stage-end
checkpoint is taken), local or ``s3://``; ``--config`` is the run's config, which says what to build (the
checkpoint holds weights only). ``--out`` is a folder or ``s3://`` prefix. ``auto`` picks the projector's format:
``llava`` for mlp2x_gelu with LLaVA-1.5's square padding, ``llava_next`` for anyres, ``vlsa`` for the SA-Perceiver,
``package`` (this package's own layout) for the rest.
"""

from __future__ import annotations

import argparse
import json
import sys

from vlsa.config import load_config
from vlsa.data.templates import jinja_template
from vlsa.export.card import card_meta, code_commit, read_metrics, render_card
from vlsa.export.checkpoint import describe, load_checkpoint_model, resolve_checkpoint
from vlsa.model.export import export_inference_model
from vlsa.model.export_hf import resolve_format


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vlsa.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-end checkpoint or run folder (local or s3://)")
    parser.add_argument("--out", required=True, help="folder or s3:// prefix to write")
    parser.add_argument("--format", default="auto", choices=("auto", "llava", "llava_next", "vlsa", "package"))
    parser.add_argument("--config", default="tiny", help="the run's preset name or YAML path (default: tiny)")
    parser.add_argument("--metrics", default="", help="JSON object of evaluation metrics for the model card")
    parser.add_argument("--commit", default=None, help="code commit for the model card (default: git HEAD, if any)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.cache_dir=DIR")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Export; prints and returns a summary (folder, format, checkpoint)."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    fmt = resolve_format(cfg.model, args.format)  # an impossible format fails before anything loads
    metrics = read_metrics(args.metrics)
    source = describe(resolve_checkpoint(args.checkpoint))
    model = load_checkpoint_model(source.uri, cfg)
    meta = card_meta(cfg, source, fmt, code_commit() if args.commit is None else args.commit, metrics)
    template = jinja_template(meta["template"], model.tokenizer) if meta["template"] else ""
    out = export_inference_model(model, args.out, fmt, card=render_card(meta), meta={"card": meta},
                                 chat_template=template)
    summary = {"out": str(out), "format": fmt, "checkpoint": source.uri, "stage": source.stage, "step": source.step}
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
