"""The model card (``README.md``) of an export: what the model is, how each tool loads it, how it was trained.

Made from the run's config (preset, stages, data, learning rates), the checkpoint it came from, the code's git
commit when the package runs from a git checkout, and evaluation metrics when they are given.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from vlsa.config import Config
from vlsa.export.checkpoint import Source
from vlsa.io import storage

CLASSES = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration",
           "vlsa": "VlsaForConditionalGeneration (code in this folder)", "package": "vlsa.load_inference_model"}


def code_commit() -> str:
    """The git commit of the code doing the export (empty when it does not run from a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def card_meta(cfg: Config, source: Source, fmt: str, commit: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """What the card says, as data (also kept in the folder's ``vlsa_export.json``)."""
    stages = [{"name": s.name, "data": s.data.train, "image_root": s.data.image_root, "template": s.data.template,
               "lr": dict(s.lr), "global_batch": s.global_batch, "epochs": s.epochs, "max_steps": s.max_steps}
              for s in cfg.train.stages]
    return {"preset": cfg.preset, "format": fmt, "checkpoint": source.uri, "stage": source.stage,
            "step": source.step, "stages": stages, "commit": commit, "metrics": dict(metrics),
            "template": cfg.train.stages[-1].data.template if cfg.train.stages else ""}


def _usage(fmt: str) -> str:
    if fmt == "package":
        return "```python\nimport vlsa\nmodel = vlsa.load_inference_model(FOLDER)\n```\n"
    remote = ", trust_remote_code=True" if fmt == "vlsa" else ""
    backend = "" if fmt == "vlsa" else ', backend="pil"'
    return ("```python\nfrom transformers import AutoModelForImageTextToText, AutoProcessor\n"
            f"model = AutoModelForImageTextToText.from_pretrained(FOLDER{remote})\n"
            f"processor = AutoProcessor.from_pretrained(FOLDER{remote}{backend})\n"
            "inputs = processor(images=[image], text=[prompt], return_tensors=\"pt\")\n"
            "answer = model.generate(**inputs, max_new_tokens=64, do_sample=False)\n```\n")


def render_card(meta: dict[str, Any]) -> str:
    """The README.md text."""
    fmt = meta["format"]
    tags = ["vlsa", "multimodal"] + (["llava"] if fmt.startswith("llava") else [])
    lines = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text",
             f"tags: [{', '.join(tags)}]", "---", "", f"# {meta['preset'] or 'VLSA'} ({fmt})", "",
             f"Class: `{CLASSES[fmt]}`. Exported by `python -m vlsa.export` from checkpoint `{meta['checkpoint']}`"
             + (f" (stage `{meta['stage']}`, step {meta['step']})." if meta["stage"] else "."),
             "The VAE, denoiser, Epigone and VQ-VAE used in training are not part of it.", "",
             "## Use", "", _usage(fmt),
             f"Prompts follow the `{meta['template']}` template the last stage trained with (the processor's chat "
             "template renders it: `processor.apply_chat_template(messages, add_generation_prompt=True)`); "
             "`<image>` marks the image.",
             "", "## Training", "", f"Preset: `{meta['preset'] or 'custom'}`.", "",
             "| stage | data | images | template | learning rates | global batch | epochs / steps |",
             "|---|---|---|---|---|---|---|"]
    for s in meta["stages"]:
        lrs = ", ".join(f"{k} {v:g}" for k, v in s["lr"].items())
        length = f"{s['max_steps']} steps" if s["max_steps"] else f"{s['epochs']:g} epochs"
        lines.append(f"| {s['name']} | {s['data'] or '-'} | {s['image_root'] or '-'} | {s['template']} | {lrs} "
                     f"| {s['global_batch']} | {length} |")
    lines += ["", "## Evaluation", ""]
    if meta["metrics"]:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(meta["metrics"].items())]
    else:
        lines.append("No metrics were given at export (`--metrics FILE`).")
    lines += ["", "## Provenance", "", f"Code commit: `{meta['commit']}`." if meta["commit"] else
              "Code commit: unknown (not exported from a git checkout).", ""]
    return "\n".join(lines)


def read_metrics(uri: str) -> dict[str, Any]:
    """A flat ``{name: value}`` JSON object (e.g. the summary ``ray_jobs/evaluate.py`` prints), or {} for ''."""
    if not uri:
        return {}
    data = json.loads(storage.read_bytes(uri))
    if not isinstance(data, dict):
        raise ValueError(f"metrics file {uri} must hold a JSON object, got {type(data).__name__}")
    return data
