"""The generated demo dataset: LLaVA formats, varied images, answers that need the image."""

from __future__ import annotations

import json
import os
from collections import Counter, deque

import numpy as np
import pytest

from vlsa.config import DecodeConfig, DemoConfig
from vlsa.data.assemble import load_image
from vlsa.data.demo import (
    ANSWERS,
    COLORS,
    COUNTS,
    generate_demo,
    load_eval,
    resolve_data,
    resolve_eval,
)
from vlsa.eval.demo import blind_baseline
from vlsa.eval.scorers.demo import score_demo
from vlsa.io.records import load_records


def test_files_are_valid_llava_data_with_varied_images(demo):
    pretrain, stats_p = load_records(demo.pretrain)
    instruct, stats_i = load_records(demo.instruct)
    assert stats_p.to_dict()["rejected"] == {} and stats_i.to_dict()["rejected"] == {}
    assert len(pretrain) == len(instruct) == 24
    assert all(len(r.turns) == 2 and r.turns[0].content.startswith("<image>") for r in pretrain)
    assert all(r.num_pairs == 3 for r in instruct)
    firsts = [r.turns[0].content for r in instruct]
    assert any(f.startswith("<image>") for f in firsts) and any(f.endswith("<image>") for f in firsts)
    sizes = [load_image(demo.image_root, r.images[0], DecodeConfig()).size for r in instruct]
    assert len(set(sizes)) > 15 and min(w / h for w, h in sizes) < 0.7 < 1.4 < max(w / h for w, h in sizes)
    assert {os.path.splitext(r.images[0])[1] for r in instruct} == {".png", ".jpg"}
    for record in instruct:
        for turn in record.turns[1::2]:
            assert len(turn.content.split()) == 1


def test_eval_split_is_in_the_llava_question_format(demo):
    questions = load_eval(demo.eval)
    assert len(questions) == 12 * 3
    for q in questions:
        assert set(q) == {"question_id", "image", "text", "category", "answer"}
        assert "<image>" not in q["text"] and q["answer"] in ANSWERS[q["category"]]
        assert q["image"].startswith("eval/")
    assert len({q["question_id"] for q in questions}) == len(questions)


def test_generation_is_reused_and_deterministic(demo, tmp_path):
    before = os.stat(demo.instruct).st_mtime_ns
    again = generate_demo(DemoConfig(train_images=24, eval_images=12), demo.root, seed=3)
    assert again == demo and os.stat(demo.instruct).st_mtime_ns == before
    other = generate_demo(DemoConfig(train_images=24, eval_images=12), tmp_path, seed=3)
    assert open(other.instruct).read() == open(demo.instruct).read()


def _looking_policy(image: np.ndarray) -> dict[str, str]:
    """Answers read from the pixels: the shape colour, the number of blobs, where their centre lies."""
    rgb = image.astype(int)
    shape_px = (rgb.max(axis=2) - rgb.min(axis=2)) > 60  # saturated: the shapes (background is grey)
    ys, xs = np.nonzero(shape_px)
    palette = np.array(list(COLORS.values()))
    nearest = np.argmin(((rgb[shape_px][:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
    color = list(COLORS)[Counter(nearest.tolist()).most_common(1)[0][0]]
    cx, cy = xs.mean() / image.shape[1] - 0.5, ys.mean() / image.shape[0] - 0.5
    position = ("right" if cx > 0 else "left") if abs(cx) > abs(cy) else ("bottom" if cy > 0 else "top")
    return {"color": color, "position": position, "count": COUNTS[min(_blobs(shape_px), 4) - 1]}


def _blobs(mask: np.ndarray) -> int:
    seen, count = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count += 1
        queue = deque([start])
        seen[start] = True
        while queue:
            y, x = queue.popleft()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
    return max(count, 1)


def test_answers_need_the_image(tmp_path):
    paths = generate_demo(DemoConfig(train_images=100, eval_images=60), tmp_path, seed=11)
    blind = blind_baseline(paths.instruct, paths.eval)
    questions = load_eval(paths.eval)
    assert blind["chance"] == pytest.approx(0.25) and blind["n"] == len(questions)
    assert blind["accuracy"] <= 0.3 and set(blind["policy"]) == set(ANSWERS) == set(blind["per_type"])
    assert max(Counter(q["answer"] for q in questions if q["category"] == "count").values()) <= 0.3 * sum(
        q["category"] == "count" for q in questions)
    looked = {}
    for q in questions:
        if q["category"] != "shape":
            image = np.asarray(load_image(paths.image_root, q["image"], DecodeConfig()))
            looked[q["question_id"]] = _looking_policy(image)[q["category"]]
    seeing = score_demo([{"question_id": k, "text": v} for k, v in looked.items()],
                        [q for q in questions if q["category"] != "shape"])
    assert seeing["accuracy"] >= 0.9, seeing
    assert json.loads(open(paths.root + "/manifest.json").read())["counts"]["eval"] == len(questions)


def test_empty_data_and_eval_configs_resolve_to_the_demo_set(tiny_cfg, demo):
    small = DemoConfig(train_images=24, eval_images=12)
    stage1, stage2 = (resolve_data(s.data, small, demo.root, seed=3) for s in tiny_cfg.train.stages)
    assert (stage1.train, stage2.train) == (demo.pretrain, demo.instruct) and stage1.image_root == demo.image_root
    assert stage2.ssft == tiny_cfg.train.stages[1].data.ssft
    assert resolve_data(stage2, small, "/nonexistent") is stage2
    evaluation = resolve_eval(tiny_cfg.eval, small, demo.root, seed=3)
    assert evaluation.data == demo.eval and evaluation.template == tiny_cfg.eval.template
