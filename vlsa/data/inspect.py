"""Check a training file before a run: ``python -m vlsa.data.inspect --data FILE --image-root DIR``.

Validates every record exactly as training does (structure, images, template alignment, length),
prints the rejected records by reason, and renders N samples with the chat template applied, the
cognition-alignment turns inserted and the supervised spans marked ``[[...]]``. ``--json`` prints one
JSON object: ``total``, ``accepted``, ``rejected`` (reason -> count), ``ssft_coverage`` (mean fraction of
each drawn SSFT target covered over the rendered samples) and ``samples`` (``id``, ``text``,
``supervised_text``, ``supervised_spans``, ``ssft``, ``ssft_coverage``, ``visual_tokens``: the tokens the
configured projector gives the sample's images).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from vlsa.config import load_config
from vlsa.data.dataset import build_dataset
from vlsa.data.ssft import CoverageMeter
from vlsa.model.tokenizer import build_tokenizer
from vlsa.tokens import IGNORE_INDEX


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vlsa.data.inspect", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="LLaVA JSON or JSONL file (local or s3://)")
    parser.add_argument("--image-root", default="", help="folder or s3:// prefix the image paths are relative to")
    parser.add_argument("--config", default="tiny", help="preset name or YAML file (default: tiny)")
    parser.add_argument("--stage", default="-1", help="train stage name or index whose data settings apply")
    parser.add_argument("--labels", default="", help="labeling output (default: the stage's data.labels)")
    parser.add_argument("--samples", type=int, default=3, help="samples to render")
    parser.add_argument("--epoch", type=int, default=0, help="epoch whose SSFT draws are shown")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.llm.max_length=512")
    return parser.parse_args(argv)


def stage_data(cfg, stage: str):
    """The data config of the stage named (or indexed by) ``stage``."""
    stages = cfg.train.stages
    named = [s for s in stages if s.name == stage]
    if named:
        return named[0].data
    if stage.lstrip("-").isdigit() and -len(stages) <= int(stage) < len(stages):
        return stages[int(stage)].data
    raise SystemExit(f"no stage {stage!r}; stages: {[s.name for s in stages]}")


def spans(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) runs of supervised positions."""
    out, start = [], None
    for i, label in enumerate(labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            out.append((start, i))
            start = None
    return out


def render_sample(sample: dict, tokenizer) -> dict:
    """Text, supervised spans and the text with spans marked ``[[...]]`` of one assembled sample."""
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    runs = spans(labels)
    decode = lambda part: tokenizer.decode(part, skip_special_tokens=False)  # noqa: E731
    marked, last = [], 0
    for start, end in runs:
        marked += [decode(ids[last:start]), "[[", decode(ids[start:end]), "]]"]
        last = end
    marked.append(decode(ids[last:]))
    supervised = [decode(ids[s:e]) for s, e in runs]
    return {"id": sample["id"], "text": decode(ids), "supervised_text": "".join(supervised),
            "supervised_spans": supervised, "marked": "".join(marked), "ssft": sample["ssft"],
            "ssft_coverage": sample.get("ssft_coverage", {}), "tokens": len(ids)}


def visual_tokens(dataset, sample: dict) -> int:
    """Visual tokens the configured projector gives the sample's images (LLaVA-NeXT's depend on each size)."""
    geometry = dataset.builder.geometry
    sizes = sample["image_sizes"].tolist()
    return sum(geometry.image_tokens(h, w, hi.shape[0]) for (h, w), hi in zip(sizes, sample["pixel_hi"]))


def inspect(args: argparse.Namespace) -> dict:
    """Validate the file and render samples; the report as a dict."""
    cfg = load_config(args.config, args.overrides)
    data = dataclasses.replace(stage_data(cfg, args.stage), train=args.data, image_root=args.image_root)
    if args.labels:
        data = dataclasses.replace(data, labels=args.labels)
    codes = int(cfg.model.vq.init.get("num_vq_embeddings", 0)) if data.ssft.vq_encoding == "tokens" else 0
    tokenizer = build_tokenizer(cfg.model.tokenizer, cfg.model.cache_dir, vq_codes=codes)
    dataset = build_dataset(cfg, data, tokenizer, check=False)
    dataset.set_epoch(args.epoch)
    report = dataset.stats.to_dict()
    count = min(args.samples, len(dataset))
    picks = sorted({round(i * (len(dataset) - 1) / max(count - 1, 1)) for i in range(count)}) if count else []
    report["samples"] = [render_sample(dataset[i], tokenizer) | {"visual_tokens": visual_tokens(dataset, dataset[i])}
                         for i in picks]
    meter = CoverageMeter()
    meter.update([s["ssft_coverage"] for s in report["samples"]])
    report["ssft_coverage"] = meter.means()
    return report


def print_report(report: dict) -> None:
    print(f"records: {report['total']}  accepted: {report['accepted']}  rejected: {sum(report['rejected'].values())}")
    for reason, n in report["rejected"].items():
        print(f"  {reason}: {n}")
    for name, value in report["ssft_coverage"].items():
        print(f"{name} (rendered samples): {value:.3f}")
    for sample in report["samples"]:
        ssft = sample["ssft"] or "none"
        print(f"\n--- {sample['id']} ({sample['tokens']} text tokens, {sample['visual_tokens']} visual tokens, "
              f"ssft: {ssft}); supervised in [[...]]")
        print(sample["marked"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = inspect(args)
    if args.json:
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
