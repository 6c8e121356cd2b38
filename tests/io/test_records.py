"""LLaVA-format readers and the record validator: round trips, every rejection reason, fuzzing."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vlsa.config import DecodeConfig
from vlsa.data.assemble import load_image
from vlsa.io.records import (
    DuplicateRecordId,
    RecordRejected,
    RejectStats,
    TooManyRejected,
    Turn,
    load_records,
    read_image_bytes,
    validate_record,
)
from vlsa.io import storage

PRETRAIN_558K = {
    "id": "004539375",
    "image": "00453/004539375.jpg",
    "conversations": [
        {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
        {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"},
    ],
}
INSTRUCT_665K = {
    "id": "000000033471",
    "image": "coco/train2017/000000033471.jpg",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
        {"from": "gpt", "value": "The bus in the image is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "The back of the bus features an advertisement."},
    ],
}
TEXT_ONLY = {
    "id": "i6IyJda_0",
    "model": "",
    "conversations": [{"from": "human", "value": "How to get result of python multiprocessing.Pool.map?"},
                      {"from": "gpt", "value": "Call get() on the AsyncResult."}],
}
MULTI_IMAGE = {
    "id": 17,
    "image": ["a/1.png", "b/2.png"],
    "conversations": [{"from": "human", "value": "<image>\n<image>\nAre these the same?"},
                      {"from": "gpt", "value": "No."}],
}


def test_round_trip_of_each_real_format(tmp_path):
    records = [PRETRAIN_558K, INSTRUCT_665K, TEXT_ONLY, MULTI_IMAGE]
    (tmp_path / "list.json").write_text(json.dumps(records))
    (tmp_path / "lines.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    for name in ("list.json", "lines.jsonl"):
        loaded, stats = load_records(str(tmp_path / name))
        assert stats.to_dict() == {"total": 4, "accepted": 4, "rejected": {}}
        pre, inst, text, multi = loaded
        assert pre.id == "004539375" and pre.images == ["00453/004539375.jpg"]
        assert pre.turns[0] == Turn("user", "Render a clear and concise summary of the photo.\n<image>")
        assert [t.role for t in inst.turns] == ["user", "assistant"] * 2 and inst.num_pairs == 2
        assert inst.turns[3].content == "The back of the bus features an advertisement."
        assert text.images == [] and text.turns[1].role == "assistant"
        assert multi.id == "17" and multi.images == ["a/1.png", "b/2.png"]


def _with(**changes) -> dict:
    record = json.loads(json.dumps(INSTRUCT_665K))
    record.update(changes)
    return record


def _conv(*pairs) -> list[dict]:
    return [{"from": f, "value": v} for f, v in pairs]


INVALID = {
    "missing_key": [{"image": "x.jpg", "conversations": INSTRUCT_665K["conversations"]},
                    {"id": "a", "image": "x.jpg"},
                    _with(conversations=[{"from": "human"}, {"from": "gpt", "value": "x"}])],
    "roles_not_alternating": [_with(conversations=_conv(("human", "<image>\nq"), ("human", "q2"))),
                              _with(conversations=_conv(("gpt", "<image> a"), ("human", "q"))),
                              _with(conversations=_conv(("human", "<image>\nq"), ("gpt", "a"), ("human", "q2")))],
    "empty_turn": [_with(conversations=_conv(("human", "<image>\nq"), ("gpt", "  "))),
                   _with(conversations=_conv(("human", "<image>\nq"), ("gpt", None)))],
    "placeholder_mismatch": [_with(conversations=_conv(("human", "q"), ("gpt", "a"))),
                             _with(conversations=_conv(("human", "<image><image>q"), ("gpt", "a"))),
                             {"id": "t", "conversations": _conv(("human", "<image>\nq"), ("gpt", "a"))}],
    "path_escape": [_with(image="../secret.jpg"), _with(image="/etc/passwd"), _with(image="a/../../b.jpg"),
                    _with(image="s3://other-bucket/x.jpg"), _with(image="C:/x.jpg")],
    "bad_role": [_with(conversations=_conv(("human", "<image>\nq"), ("robot", "a")))],
    "bad_image_field": [_with(image=""), _with(image=[]), _with(image=3)],
    "not_an_object": [[1, 2], "text"],
}


@pytest.mark.parametrize("expected", sorted(INVALID))
def test_each_invalid_kind_is_rejected_with_its_reason(expected):
    for raw in INVALID[expected]:
        with pytest.raises(RecordRejected) as err:
            validate_record(raw, 0)
        assert err.value.reason == expected, (raw, err.value)


def test_invalid_records_are_counted_not_raised(tmp_path):
    lines = [json.dumps(INSTRUCT_665K), "{not json", json.dumps(_with(id="b", image="../x.jpg")),
             json.dumps(_with(id="c")), json.dumps(_with(id="c"))]
    (tmp_path / "d.jsonl").write_bytes("\n".join(lines).encode() + b"\n{\"id\": \"\xff\"}\n")  # not UTF-8
    records, stats = load_records(str(tmp_path / "d.jsonl"), allow_duplicate_ids=True)
    assert [r.id for r in records] == ["000000033471", "c"]
    assert stats.to_dict() == {"total": 6, "accepted": 2,
                               "rejected": {"bad_json": 2, "duplicate_id": 1, "path_escape": 1}}
    with pytest.raises(TooManyRejected, match="4 of 6 records rejected"):
        stats.check(0.6)
    stats.check(0.7)


def test_duplicate_ids_are_an_error_by_default_naming_both_records(tmp_path):
    lines = [json.dumps(_with(id="a")), json.dumps(_with(id="c")), json.dumps(_with(id="c"))]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    with pytest.raises(DuplicateRecordId, match=r"record 2: id 'c' is also the id of record 1.*allow_duplicate_ids"):
        load_records(str(tmp_path / "d.jsonl"))
    records, stats = load_records(str(tmp_path / "d.jsonl"), allow_duplicate_ids=True)
    assert [r.id for r in records] == ["a", "c"] and stats.rejected == {"duplicate_id": 1}


def test_unreadable_images_are_rejected_with_reasons(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (9, 9)).save(root / "ok.png")
    good = (root / "ok.png").read_bytes()
    (root / "cut.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "outside.png").write_bytes(good)
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    cfg = DecodeConfig()
    assert load_image(str(root), "ok.png", cfg).size == (9, 9)
    cases = [("missing.png", "image_missing"), ("cut.png", "image_truncated"), ("link.png", "path_escape")]
    for rel, expected in cases:
        with pytest.raises(RecordRejected) as err:
            load_image(str(root), rel, cfg)
        assert err.value.reason == expected


@pytest.mark.integration
def test_records_and_images_from_s3(s3_server, tmp_path):
    bucket = s3_server.make_bucket("data-records")
    buf = io.BytesIO()
    Image.new("RGB", (5, 7), (1, 2, 3)).save(buf, "PNG")
    storage.write_bytes(f"{bucket}/images/coco/train2017/000000033471.jpg", buf.getvalue())
    storage.write_bytes(f"{bucket}/train.json", json.dumps([INSTRUCT_665K, _with(id="x", image="../y.jpg")]).encode())
    records, stats = load_records(f"{bucket}/train.json")
    assert [r.id for r in records] == ["000000033471"] and stats.rejected == {"path_escape": 1}
    data = read_image_bytes(f"{bucket}/images", records[0].images[0])
    assert load_image(f"{bucket}/images", records[0].images[0], DecodeConfig()).getpixel((0, 0)) == (1, 2, 3)
    assert data == buf.getvalue()


# ------------------------------------------------------------------------------------------ fuzzing

_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12),
                    st.sampled_from(["<image>", "human", "gpt", "user", "assistant", "../x", "a.jpg"]))
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["id", "image", "conversations", "from", "value", "x"]), inner, max_size=4), max_leaves=20)
_turn = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "user", "system", 3]),
                               "value": st.one_of(st.text(max_size=20), st.just("<image>\nq"), st.none())})
_record = st.fixed_dictionaries(
    {"id": st.one_of(st.text(max_size=5), st.integers(), st.none())},
    optional={"image": st.one_of(_scalar, st.lists(_scalar, max_size=3)), "conversations": st.lists(_turn, max_size=5)},
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(_json, _record))
def test_fuzz_validator_returns_a_record_or_a_rejection(raw):
    try:
        record = validate_record(raw, 0)
    except RecordRejected as err:
        assert err.reason and " " not in err.reason
        return
    assert len(record.turns) % 2 == 0 and record.turns
    assert all(t.role == ("user" if i % 2 == 0 else "assistant") for i, t in enumerate(record.turns))
    assert sum(t.content.count("<image>") for t in record.turns) == len(record.images)
    assert all(not p.startswith(("/", "..")) for p in record.images)


def test_reject_stats_merge_and_fraction():
    a, b = RejectStats(), RejectStats()
    for reason in (None, None, "empty_turn"):
        a.add(reason)
    b.add("path_escape")
    a.merge(b)
    assert a.to_dict() == {"total": 4, "accepted": 2, "rejected": {"empty_turn": 1, "path_escape": 1}}
    assert a.fraction() == 0.5
