"""At sample assembly each label row is checked against its record: image path, decoded width and
height, and the labels' identity. A mismatch is an error naming the record and both values."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import pytest
from data_helpers import label_row
from PIL import Image

from vlsa.config import SSFTConfig
from vlsa.data.assemble import SampleBuilder, geometry_from_config
from vlsa.io.records import load_records
from vlsa.labels.schema import LabelsMismatch, label_identity


class StoredLabels(dict, Mapping):
    """Label rows with the identity a ``LabelStore`` reports from its manifest."""

    def __init__(self, rows: dict, identity: dict):
        super().__init__(rows)
        self.identity = identity


def _rows(records, root: str, **change) -> dict:
    rows = {}
    for i, record in enumerate(records):
        with Image.open(Path(root) / record.images[0]) as image:
            size = {"width": image.width, "height": image.height}
        rows[record.id] = label_row(i) | {"id": record.id, "image": record.images[0]} | size | change
    return rows


def _builder(tiny_cfg, tokenizer, labels, identity=None):
    data = copy.deepcopy(tiny_cfg.train.stages[1].data)
    data.ssft = SSFTConfig(p_vq=1.0, p_px=1.0, max_target_tokens=200)
    return SampleBuilder(tokenizer, data, geometry_from_config(tiny_cfg), labels=labels,
                         decode=tiny_cfg.label.decode, label_identity=identity)


@pytest.fixture(scope="module")
def records(demo):
    return load_records(demo.instruct)[0][:3]


def test_matching_rows_assemble(tiny_cfg, tokenizer, demo, records):
    identity = label_identity(tiny_cfg)
    builder = _builder(tiny_cfg, tokenizer, StoredLabels(_rows(records, demo.image_root), identity), identity)
    assert [builder.build(r, demo.image_root)["id"] for r in records] == [r.id for r in records]


def test_a_row_of_another_image_is_an_error_naming_both_paths(tiny_cfg, tokenizer, demo, records):
    rows = _rows(records, demo.image_root)
    rows[records[1].id]["image"] = records[0].images[0]  # labels made from another JSON
    builder = _builder(tiny_cfg, tokenizer, rows)
    with pytest.raises(LabelsMismatch, match=rf"record {records[1].id} image 0: the label row is for image "
                                             rf"'{records[0].images[0]}', the record has '{records[1].images[0]}'"):
        builder.build(records[1], demo.image_root)


def test_a_row_of_another_size_is_an_error_naming_both_sizes(tiny_cfg, tokenizer, demo, records):
    rows = _rows(records, demo.image_root)
    real = (rows[records[2].id]["width"], rows[records[2].id]["height"])
    rows[records[2].id] |= {"width": real[0] + 1, "height": real[1]}  # labels made from another image root
    builder = _builder(tiny_cfg, tokenizer, rows)
    with pytest.raises(LabelsMismatch, match=rf"record {records[2].id} image 0 .*label row is for a "
                                             rf"{real[0] + 1}x{real[1]} image, the image read is {real[0]}x{real[1]}"):
        builder.build(records[2], demo.image_root)


def test_rows_of_other_models_are_an_error_naming_both_identities(tiny_cfg, tokenizer, demo, records):
    identity = label_identity(tiny_cfg)
    made = copy.deepcopy(identity)
    made["vq"]["seed"] = identity["vq"]["seed"] + 1  # labels made with another VQ-VAE
    builder = _builder(tiny_cfg, tokenizer, StoredLabels(_rows(records, demo.image_root), made), identity)
    with pytest.raises(LabelsMismatch, match=rf"record {records[0].id} image 0: labels were made with other models "
                                             rf"or sides: vq: labels have \{{'seed': 1\}}, config has \{{'seed': 0\}}"):
        builder.build(records[0], demo.image_root)
