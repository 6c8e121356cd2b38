"""Image and text-only samples mixed under ZeRO-3: every rank runs the same modules on every step.

LLaVA-665K holds text-only records among image records. Under ZeRO-3 a module's parameters are
gathered by a collective when it runs, so a rank whose micro-batch has no image must still run the
vision tower, projector, Epigone and denoiser (on a blank image whose losses are zero), or the
gathers of the two ranks stop lining up and the job hangs or fails. Without the blank image this test
hangs at the first step that gives one rank an image and the other none: the rank with the image waits
in an all-gather of its backward pass, the other in the reduce-scatter of its gradients.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
from train_helpers import history, stage_run

import vlsa
from vlsa.config import config_from_dict
from vlsa.train.driver import train
from vlsa.train.loop import Hooks, train_worker
from tests.tracking_db import sqlite_tracking_uri

pytestmark = pytest.mark.integration
STEPS = 40
WORDS = "red green blue yellow square circle triangle left right top bottom one two three four gray".split()


def mixed_records(demo, visual_tokens: int = 16) -> list[dict]:
    """The demo set's image records, each followed by a text-only record of the same estimated length
    (characters / 4 plus the image's visual tokens), so the length-grouped sampler pairs them up."""
    images = json.loads(Path(demo.pretrain).read_text()) + json.loads(Path(demo.instruct).read_text())
    records = []
    for i, record in enumerate(images):
        chars = sum(len(turn["value"]) for turn in record["conversations"]) + 4 * (visual_tokens - 1)
        words = ""
        for k in range(10_000):
            if len(words) * 2 + len("Repeat these words: ") >= chars:
                break
            words = f"{words} {WORDS[(i + k) % len(WORDS)]}".strip()
        records += [record, {"id": f"text-{i}", "conversations": [
            {"from": "human", "value": f"Repeat these words: {words}"}, {"from": "gpt", "value": words}]}]
    return records


def mixed_config(demo, cache_dir: str, root: Path, tracking_uri: str):
    """One Stage II-like stage on ZeRO-3: everything trainable, 2 workers, micro-batch 1, no accumulation,
    with the paper presets' memory controls (chunked LM loss, LLM activations recomputed; their head and
    layers run again in the backward pass, where ZeRO-3 gathers them again)."""
    cfg = vlsa.load_config("tiny", [f"model.cache_dir={cache_dir}", "model.llm.loss_chunks=4"])
    data = cfg.to_dict()
    path = root / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in mixed_records(demo)))
    stage = data["train"]["stages"][1]
    stage |= {"max_steps": STEPS, "global_batch": 2, "micro_batch": 1, "zero_stage": 3,
              "activation_checkpointing": ["llm"]}
    stage["data"] |= {"train": str(path), "image_root": demo.image_root, "ssft": {"p_vq": 0.0, "p_px": 0.0}}
    data["train"] |= {"stages": [stage], "loader_workers": 0}
    data["run"] |= {"num_workers": 2, "max_failures": 0, "storage_path": str(root / "runs"), "name": "mixed"}
    data["run"]["mlflow"]["tracking_uri"] = tracking_uri
    return config_from_dict(data)


def _record_images(marker_dir: str) -> Hooks:
    """Writes one file per (step, rank) saying whether that rank's micro-batch had an image."""

    def on_batch(batch, info):
        has_image = int(batch["image_counts"].sum()) > 0
        Path(marker_dir, f"{info.step:03d}-{info.rank}-{int(has_image)}").touch()
        return batch

    return Hooks(on_batch=on_batch)


def test_zero3_trains_on_alternating_image_and_text_only_records(local_ray, train_demo, cache_dir, tmp_path):
    tracking_uri = sqlite_tracking_uri(tmp_path)
    cfg = mixed_config(train_demo, cache_dir, tmp_path, tracking_uri)
    markers = tmp_path / "markers"
    markers.mkdir()
    outcome = train(cfg, train_fn=functools.partial(train_worker, hooks=_record_images(str(markers))))

    seen: dict[int, dict[int, int]] = {}
    for name in (p.name for p in markers.iterdir()):
        step, rank, has_image = map(int, name.split("-"))
        seen.setdefault(step, {})[rank] = has_image
    assert sorted(seen) == list(range(1, STEPS + 1)) and all(sorted(s) == [0, 1] for s in seen.values())
    mixed = [step for step, ranks in seen.items() if ranks[0] != ranks[1]]
    assert len(mixed) >= 5, f"only steps {mixed} gave one rank an image and the other none"
    assert any(not any(r.values()) for r in seen.values()), "no step was text-only on both ranks"

    run_id = stage_run(tracking_uri, outcome.mlflow_run_id, "stage2").info.run_id
    loss, loss_rec = history(tracking_uri, run_id, "loss"), history(tracking_uri, run_id, "loss_rec")
    assert sorted(loss) == list(range(1, STEPS + 1)) and all(math.isfinite(v) for v in loss.values())
    # loss_rec is logged for the steps with an image on some rank, and only for those
    assert sorted(loss_rec) == sorted(step for step, ranks in seen.items() if any(ranks.values()))
