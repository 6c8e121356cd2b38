"""One shard's read step without Ray: per-image failures become rejects, and the packed shard
round-trips exactly."""

from __future__ import annotations

import json

import numpy as np
from label_helpers import decoder_verdict, write_corpus

from vlsa.labels.compute import LabelGeometry
from vlsa.labels.shards import Item
from vlsa.labels.worker import ImageReader, decode_shard, pack, unpack


def test_decode_shard_keeps_good_images_and_rejects_each_bad_one(tmp_path, label_cfg):
    data, root, contents = write_corpus(tmp_path / "corpus")
    items = [Item(r["id"], r["image"]) for r in json.loads(data.read_text()) if "image" in r]
    outside = tmp_path / "outside.png"
    outside.write_bytes(contents[items[0].id][1])
    (root / "link.png").symlink_to(outside)  # a symlink leaving the image root
    items.append(Item("escape", "link.png"))
    geometry = LabelGeometry.from_config(label_cfg)
    decoded = decode_shard(3, items, ImageReader(str(root)), label_cfg.label.decode, geometry)

    verdicts = {rid: decoder_verdict(blob, label_cfg.label.decode) for rid, (_, blob) in contents.items()}
    verdicts["escape"] = "path_escape"
    assert [i.id for i in decoded.items] == [i.id for i in items if verdicts[i.id] is None]
    assert {i.id: reason for i, reason, _ in decoded.rejects} == {k: v for k, v in verdicts.items() if v}
    assert all(detail for _, _, detail in decoded.rejects)  # every reject says why
    assert all(p.vq_rgb.shape == (32, 32, 3) and p.vae_rgb.dtype == np.uint8 for p in decoded.prepared)

    back = unpack(pack(decoded, geometry))
    assert (back.shard, back.items, back.rejects) == (3, decoded.items, decoded.rejects)
    for a, b in zip(back.prepared, decoded.prepared):
        assert (a.width, a.height) == (b.width, b.height)
        assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("vq_rgb", "vae_rgb"))


def test_an_all_rejected_shard_packs_to_empty_arrays(label_cfg):
    geometry = LabelGeometry.from_config(label_cfg)
    reader = ImageReader("/nonexistent-root")
    decoded = decode_shard(0, [Item("a", "a.png")], reader, label_cfg.label.decode, geometry)
    assert [(i.id, reason) for i, reason, _ in decoded.rejects] == [("a", "image_missing")]
    back = unpack(pack(decoded, geometry))
    assert back.prepared == [] and back.rejects == decoded.rejects
