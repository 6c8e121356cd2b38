"""Cognition alignment: the paper's templates, region and resolution, exact answers, budgets, determinism."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from PIL import Image
from data_helpers import (expected_px, expected_vq, label_row, parse_px, parse_vq, resolution, stated_count, x_lo,
                          x_lo_of)

from vlsa.config import SSFTConfig
from vlsa.data import ssft
from vlsa.data.assemble import SampleBuilder, geometry_from_config
from vlsa.io.records import Record, Turn, load_records
from vlsa.model.tokenizer import build_tokenizer
from vlsa.tokens import IGNORE_INDEX, vq_code_token

# Tab. 6 of the appendix (002) uses this VQ template; Tab. 18 of the paper lists this pixel template.
TAB6_VQ = ("Imagine a hypothetical encoding process for this image. What would the resulting VQ indices look like, "
           "summarizing its content?")
TAB18_PX = "Please tell me the RGB value of each and every pixel that makes up this image."


def count_tokens(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def source_template(question: str, kind: str) -> str:
    """The paper template a question was expanded from (its region and note taken out)."""
    matches = [t for t in ssft.instructions()[kind] if question.startswith(t.split("this image")[0])
               and t.split("this image")[1] in question]
    assert len(matches) >= 1, question
    return matches[0]


def test_the_paper_instruction_lists_are_kept_verbatim():
    lists = ssft.instructions()
    assert len(lists["vq"]) == 20 and len(lists["px"]) == 20
    assert len(set(lists["vq"])) == 20 and len(set(lists["px"])) == 20
    assert TAB6_VQ in lists["vq"] and TAB18_PX in lists["px"]
    assert lists["vq"][0] == ("Provide the VQ indices that would represent the essential features of this image, "
                              "capturing its key visual elements.")
    assert all(t.count("this image") == 1 for t in lists["vq"] + lists["px"])


def test_the_appendix_example_is_reproduced_for_a_672_quarter():
    row = label_row(0, vq_side=42, codes=4096)
    d = ssft.Draw("vq", ssft.instructions()["vq"].index(TAB6_VQ), 0, 0.0, 0.0, 0.5)
    target = ssft.vq_target(d, row, vq_image_size=672, budget=100_000, count_tokens=lambda t: t.count(",") + 3)
    assert target.question == (
        "Imagine a hypothetical encoding process for the upper left quarter of this image. What would the resulting "
        "VQ indices look like, summarizing its content? Note that the image resolution is [3, 672, 672], so you "
        "should generate 1764 indices."
    )
    assert parse_vq(target.answer) == row["vq_indices"][0] and len(target.values) == 1764


@pytest.mark.parametrize("budget", [10_000, 40, 12])
def test_vq_answer_holds_the_stated_indices_of_the_stated_region(tokenizer, budget):
    count = count_tokens(tokenizer)
    for seed in range(12):
        row = label_row(seed, vq_side=8)
        d = ssft.draw(SSFTConfig(p_vq=1.0), seed, 0, f"s{seed}")[0]
        target = ssft.vq_target(d, row, vq_image_size=64, budget=budget, count_tokens=count)
        assert count(target.answer) <= budget
        values = parse_vq(target.answer)
        assert len(values) == stated_count(target.question) == len(target.values)
        assert values == expected_vq(target.question, row)
        assert resolution(target.question) == (3, 64, 64)
        assert source_template(target.question, "vq")
        assert target.reduced == (budget < 10_000)


@pytest.mark.parametrize("budget", [100_000, 200, 30])
def test_pixel_answer_holds_the_stated_pixels_of_the_stated_quarter(tokenizer, budget):
    count = count_tokens(tokenizer)
    for seed in range(12):
        rgb = x_lo(seed, 16)
        d = ssft.draw(SSFTConfig(p_px=1.0), seed, 1, f"s{seed}")[0]
        target = ssft.px_target(d, rgb, budget=budget, count_tokens=count)
        assert count(target.answer) <= budget
        values = parse_px(target.answer)
        assert values == expected_px(target.question, rgb)
        assert stated_count(target.question) in (None, len(values))  # the full quarter is named by its region
        if not target.reduced:
            assert len(values) == 64 and "Note that the image resolution is [3, 16, 16]." in target.question
        assert source_template(target.question, "px")


def test_vq_indices_as_one_token_per_code(tiny_cfg, cache_dir):
    tok = build_tokenizer(tiny_cfg.model.tokenizer, cache_dir, vq_codes=64)
    row = label_row(5)
    d = ssft.Draw("vq", 3, 2, 0.2, 0.7, 0.1)
    target = ssft.vq_target(d, row, vq_image_size=32, budget=100, count_tokens=count_tokens(tok), encoding="tokens")
    ids = tok(target.answer, add_special_tokens=False)["input_ids"]
    assert len(ids) == 16 + 2
    assert tok.convert_ids_to_tokens(ids[1:-1]) == [vq_code_token(i) for i in row["vq_indices"][2]]


def test_insertion_keeps_the_conversation_and_follows_the_image():
    turns = [Turn("user", "Hi"), Turn("assistant", "Hello"), Turn("user", "<image>\nq1"), Turn("assistant", "a1"),
             Turn("user", "q2"), Turn("assistant", "a2")]
    target = ssft.Target("px", "Q?", "A", [], "r", (3, 2, 2), False)
    positions = set()
    for u in [0.0, 0.3, 0.6, 0.99]:
        out = ssft.insert(turns, target, u)
        at = next(i for i, t in enumerate(out) if t.ssft)
        positions.add(at)
        assert [t for t in out if not t.ssft] == turns and out[at + 1].content == "A" and out[at + 1].ssft
    assert positions == {4, 6}  # after the image pair: between pairs or at the end


def test_draws_depend_only_on_seed_epoch_and_id():
    cfg = SSFTConfig(p_vq=0.5, p_px=0.5)
    assert ssft.draw(cfg, 1, 2, "abc") == ssft.draw(cfg, 1, 2, "abc")
    by_epoch = {tuple(ssft.draw(cfg, 1, e, "abc")) for e in range(20)}
    assert len(by_epoch) > 5
    taken = [len(ssft.draw(cfg, 0, 0, f"id{i}")) for i in range(400)]
    assert 0.8 < sum(taken) / 400 < 1.2  # two tasks with p = 0.5 each


def _builder(tiny_cfg, tokenizer, records, max_length, root, p=1.0, max_target=1024):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.model.llm.max_length = max_length
    data = copy.deepcopy(cfg.train.stages[1].data)
    data.ssft = SSFTConfig(p_vq=p, p_px=p, max_target_tokens=max_target)
    labels = {r.id: label_row(i) | _size(root, r.images[0]) for i, r in enumerate(records)}
    builder = SampleBuilder(tokenizer, data, geometry_from_config(cfg), labels=labels, decode=cfg.label.decode, seed=7)
    return builder, labels


def _size(root: str, rel: str) -> dict:
    """The width and height a label row of this image carries (the assembly checks them)."""
    with Image.open(Path(root) / rel) as image:
        return {"width": image.width, "height": image.height}


def _ssft_answers(sample, tokenizer) -> list[str]:
    ids, mask = sample["input_ids"].tolist(), sample["ssft_mask"].tolist()
    text = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    return re.findall(r"<vq start>.*?<vq end>|<rgb start>.*?<rgb end>", text)


@pytest.mark.parametrize("max_length", [240, 300, 384])
def test_assembled_samples_never_pass_max_length_and_targets_are_whole(tiny_cfg, tokenizer, demo, max_length):
    records, _ = load_records(demo.instruct)
    short = [Turn("user", "<image>\nWhat is it?"), Turn("assistant", "shapes")]
    records = [Record(r.id, r.images, short) for r in records]
    builder, labels = _builder(tiny_cfg, tokenizer, records[:10], max_length, demo.image_root)
    inserted = 0
    for record in records[:10]:
        sample = builder.build(record, demo.image_root, epoch=0)
        assert len(sample["input_ids"]) + 16 - 1 <= max_length  # one placeholder becomes 16 visual tokens
        turns = tokenizer.decode(sample["input_ids"].tolist())
        for answer in _ssft_answers(sample, tokenizer):
            inserted += 1
            question = turns[: turns.index(answer)].rsplit("USER: ", 1)[1]
            row = labels[record.id]
            if answer.startswith("<vq start>"):
                assert parse_vq(answer) == expected_vq(question, row)
                assert len(parse_vq(answer)) == stated_count(question)
            else:
                assert parse_px(answer) == expected_px(question, x_lo_of(demo.image_root, record))
        labels_t = sample["labels"]
        assert (labels_t[sample["ssft_mask"]] != IGNORE_INDEX).all()
    assert inserted >= 10  # p = 1: every sample gets at least one turn that fits


def test_a_resumed_run_sees_the_same_augmented_sample(tiny_cfg, tokenizer, demo):
    records, _ = load_records(demo.instruct)
    builder, _ = _builder(tiny_cfg, tokenizer, records[:6], 384, demo.image_root, p=0.5)
    again, _ = _builder(tiny_cfg, tokenizer, records[:6], 384, demo.image_root, p=0.5)
    first = [builder.build(r, demo.image_root, epoch=3)["input_ids"].tolist() for r in records[:6]]
    assert first == [again.build(r, demo.image_root, epoch=3)["input_ids"].tolist() for r in records[:6]]
    other = [builder.build(r, demo.image_root, epoch=4)["input_ids"].tolist() for r in records[:6]]
    assert other != first


@pytest.mark.parametrize("preset", ["llava15_hd_vicuna7b", "llava_next_llama3_8b", "llava_next_llama3_8b_3stage"])
def test_paper_presets_give_every_image_sample_both_tasks_and_the_whole_quarter(preset):
    """App. B.11: "a template from each list" for every sample; the VQ budget holds all 1,764 indices."""
    from vlsa.config import load_config

    cfg = load_config(preset)
    stage = cfg.train.stages[-1]
    ssft_cfg = stage.data.ssft
    assert (ssft_cfg.p_vq, ssft_cfg.p_px) == (1.0, 1.0)
    quarter = (cfg.model.vq_image_size // 8 // 2) ** 2  # f = 8 VQ-VAE, one quarter
    assert quarter == 1764
    # one token a code plus the two markers; as text, at most 4 tokens a code (digits in groups of 3, ",", " ")
    per_code = 1 if ssft_cfg.vq_encoding == "tokens" else 4
    assert ssft_cfg.budget("vq") >= per_code * quarter + 2
    assert ssft_cfg.budget("px") < ssft_cfg.budget("vq")  # pixels: the strided grid, the one forced departure
    # the VQ turn goes in first: a whole quarter, 576 visual tokens and a 512-token conversation fit
    assert cfg.model.llm.max_length >= ssft_cfg.budget("vq") + 576 + 512


def test_coverage_is_the_fraction_of_the_quarter_answered():
    row, rgb = label_row(0, vq_side=42, codes=4096), x_lo(0, 8)
    d = ssft.Draw("vq", 0, 2, 0.3, 0.6, 0.5)
    tokens = lambda t: t.count(",") + 3  # noqa: E731
    assert ssft.vq_target(d, row, vq_image_size=672, budget=100_000, count_tokens=tokens).coverage == 1.0
    block = ssft.vq_target(d, row, vq_image_size=672, budget=500, count_tokens=tokens)
    assert block.reduced and block.coverage == pytest.approx(len(block.values) / 1764)
    px = ssft.px_target(ssft.Draw("px", 0, 1, 0.0, 0.0, 0.5), rgb, budget=10_000, count_tokens=tokens)
    assert px.coverage == 1.0
    strided = ssft.px_target(ssft.Draw("px", 0, 1, 0.0, 0.0, 0.5), rgb, budget=8, count_tokens=tokens)
    assert strided.coverage == pytest.approx(len(strided.values) / 16)
    meter = ssft.CoverageMeter()
    meter.update([{"vq": 1.0, "px": 0.25}, {"vq": 0.0}, {}])
    assert meter.means() == {"ssft/vq_coverage": 0.5, "ssft/px_coverage": 0.25}


def test_samples_report_the_coverage_of_their_drawn_targets(tiny_cfg, tokenizer, demo):
    records, _ = load_records(demo.instruct)
    builder, _ = _builder(tiny_cfg, tokenizer, records[:4], 384, demo.image_root, max_target=48)
    for record in records[:4]:
        sample = builder.build(record, demo.image_root, epoch=0)
        assert set(sample["ssft_coverage"]) == {"vq", "px"}  # p = 1: both drawn
        assert all(0.0 <= v <= 1.0 for v in sample["ssft_coverage"].values())
        for kind in sample["ssft"]:
            assert sample["ssft_coverage"][kind] > 0
