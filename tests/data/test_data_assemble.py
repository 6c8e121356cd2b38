"""Sample assembly and collate: the batch contract, labels from the labeling output or in-process."""

from __future__ import annotations

import copy
import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from data_helpers import expected_px, expected_vq, parse_px, parse_vq, x_lo_of

from vlsa.config import DecodeConfig, SSFTConfig
from vlsa.data.assemble import SampleBuilder, geometry_from_config, load_image, pixel_targets
from vlsa.data.collate import Collator
from vlsa.data.dataset import build_dataset
from vlsa.io.records import Record, Turn, load_records
from vlsa.labels.compute import LabelComputer, LabelGeometry
from vlsa.labels.schema import label_identity
from vlsa.labels.shards import build_manifest, ensure_spec, items_of, plan_shards, write_manifest
from vlsa.labels.worker import ImageReader, ShardLabeler, decode_shard
from vlsa.model.encoding import CompressiveEncoder


def _data(cfg, train: str, image_root: str, p: float = 0.0, labels: str = ""):
    data = copy.deepcopy(cfg.train.stages[1].data)
    data.train, data.image_root, data.labels = train, image_root, labels
    data.ssft = SSFTConfig(p_vq=p, p_px=p, max_target_tokens=200)
    return data


@pytest.fixture(scope="module")
def computer(tiny_cfg):
    return LabelComputer(tiny_cfg, device="cpu")


def test_collate_gives_the_batch_contract(tiny_cfg, tokenizer, demo):
    records, _ = load_records(demo.instruct)
    one, two = records[0], records[1]
    mixed = [
        one,
        Record("text", [], [Turn("user", "Say hi."), Turn("assistant", "hi")]),
        Record("pair", [one.images[0], two.images[0]],
               [Turn("user", "<image>\n<image>\nSame?"), Turn("assistant", "no")]),
    ]
    builder = SampleBuilder(tokenizer, _data(tiny_cfg, "", ""), geometry_from_config(tiny_cfg), labels=None,
                            decode=tiny_cfg.label.decode)
    samples = [builder.build(r, demo.image_root) for r in mixed]
    batch = Collator(tokenizer.pad_token_id)(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    b, t = 3, max(lengths)
    assert batch["input_ids"].shape == (b, t) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.long and batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["labels"].dtype == torch.long and batch["ssft_mask"].dtype == torch.bool
    for i, n in enumerate(lengths):
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all() and (batch["labels"][i, n:] == -100).all()
    assert batch["image_counts"].tolist() == [1, 0, 2]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert [(row == image_id).sum().item() for row in batch["input_ids"]] == [1, 0, 2]
    encoder = CompressiveEncoder(32, tiny_cfg.model.encoding.max_tiles)
    rels = [one.images[0], one.images[0], two.images[0]]
    images = [load_image(demo.image_root, rel, tiny_cfg.label.decode) for rel in rels]
    tiles = [encoder.num_tiles(im.width, im.height) for im in images]
    assert batch["pixel_lo"].shape == (3, 3, 32, 32)
    assert batch["pixel_hi"].shape == (3, max(tiles), 3, 32, 32)
    assert batch["tile_mask"].sum(1).tolist() == tiles
    for n, image in enumerate(images):
        lo, hi = encoder(image)
        assert torch.equal(batch["pixel_lo"][n], lo) and torch.equal(batch["pixel_hi"][n, : tiles[n]], hi)
        assert (batch["pixel_hi"][n, tiles[n]:] == 0).all()
    assert batch["recon_pixels"].shape == (3, 3, 32, 32) and "recon_latent" not in batch
    assert batch["recon_pixels"].min() >= -1 and batch["recon_pixels"].max() <= 1
    assert batch["ids"] == [one.id, "text", "pair"]


@pytest.mark.parametrize("recon", ["pixels", "latent"])
def test_collate_of_text_only_samples_gives_empty_image_tensors(tiny_cfg, tokenizer, recon):
    """A micro-batch of text-only samples: zero images with the trailing shapes the model expects
    (the model then runs its image path on a blank image, so ZeRO-3 ranks stay in step)."""
    latent = np.zeros((16, 4, 4), dtype=np.float32)
    labels = {"any": {"latent": latent.tobytes(), "latent_shape": list(latent.shape)}} if recon == "latent" else None
    builder = SampleBuilder(tokenizer, _data(tiny_cfg, "", ""), geometry_from_config(tiny_cfg), labels=labels,
                            decode=tiny_cfg.label.decode, recon=recon)
    records = [Record(f"text-{i}", [], [Turn("user", "Say hi."), Turn("assistant", "hi " * i)]) for i in (1, 3)]
    batch = Collator(tokenizer.pad_token_id)([builder.build(r, "") for r in records])
    assert batch["image_counts"].tolist() == [0, 0]
    assert batch["pixel_lo"].shape == (0, 3, 32, 32) and batch["pixel_hi"].shape == (0, 1, 3, 32, 32)
    assert batch["tile_mask"].shape == (0, 1) and batch["tile_mask"].dtype == torch.bool
    key, shape = ("recon_latent", (0, 16, 4, 4)) if recon == "latent" else ("recon_pixels", (0, 3, 32, 32))
    assert batch[key].shape == shape and ({"recon_latent", "recon_pixels"} - {key}).isdisjoint(batch)
    assert (batch["labels"] != -100).any(dim=1).all()


def _label_output(cfg, records_file: str, image_root: str, output: str) -> None:
    """A labeling output written with the labeling job's own shard code (no Ray needed for it)."""
    records, _ = load_records(records_file)
    shards = plan_shards(items_of(records), cfg.label.rows_per_shard)
    spec = {"identity": label_identity(cfg), "items": sum(map(len, shards)), "fingerprint": "test",
            "rows_per_shard": cfg.label.rows_per_shard}
    ensure_spec(output, spec)
    labeler = ShardLabeler(cfg.to_dict(), output)
    for k, items in enumerate(shards):
        decoded = decode_shard(k, items, ImageReader(image_root), cfg.label.decode, LabelGeometry.from_config(cfg))
        labeler.label_shard(decoded)
    write_manifest(output, build_manifest(output, shards, spec, {"data": records_file}))


def test_labels_from_the_labeling_output(tiny_cfg, tokenizer, demo, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(demo.image_root, root)
    rows = json.loads(open(demo.instruct).read())[:7]
    cut = (root / rows[6]["image"]).read_bytes()
    (root / rows[6]["image"]).write_bytes(cut[: len(cut) // 2])  # labeling rejects it: training must skip it
    (tmp_path / "train.json").write_text(json.dumps(rows))
    _label_output(tiny_cfg, str(tmp_path / "train.json"), str(root), str(tmp_path / "labels"))
    data = _data(tiny_cfg, str(tmp_path / "train.json"), str(root), p=1.0, labels=str(tmp_path / "labels"))
    data.reject_threshold = 0.2
    dataset = build_dataset(tiny_cfg, data, tokenizer)
    assert dataset.stats.to_dict() == {"total": 7, "accepted": 6, "rejected": {"image_truncated": 1}}
    store = dataset.builder.labels
    batch = Collator(tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    assert "recon_pixels" not in batch and batch["recon_latent"].shape == (6, *store[rows[0]["id"]]["latent_shape"])
    for i, record in enumerate(dataset.records):
        row = store[record.id]
        latent = np.frombuffer(row["latent"], np.float32).reshape(row["latent_shape"])
        assert np.array_equal(batch["recon_latent"][i].numpy(), latent)
        _check_ssft_answers(batch["input_ids"][i], tokenizer, row, x_lo_of(str(root), record))
    assert sum(len(kinds) for kinds in batch["ssft"]) >= 6


def _as_schema_version_1(output: Path, image_root: str, side: int = 32) -> None:
    """Rewrite a labeling output as label schema version 1 wrote it: pixel targets stored in every row."""
    for shard in sorted((output / "labels").glob("*.parquet")):
        table = pq.read_table(shard)
        pixels = [pixel_targets(load_image(image_root, rel, DecodeConfig()), side).tobytes()
                  for rel in table.column("image").to_pylist()]
        table = table.append_column("pixels", pa.array(pixels, pa.binary()))
        pq.write_table(table.append_column("pixels_side", pa.array([side] * len(pixels), pa.int32())), shard)
    manifest = json.loads((output / "manifest.json").read_text())
    manifest["identity"]["schema_version"] = manifest["schema_version"] = 1
    (output / "manifest.json").write_text(json.dumps(manifest))


def test_labels_of_schema_version_1_are_read_without_their_pixel_column(tiny_cfg, tokenizer, demo, tmp_path):
    rows = json.loads(open(demo.instruct).read())[:4]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    _label_output(tiny_cfg, str(tmp_path / "train.json"), demo.image_root, str(tmp_path / "labels"))
    _as_schema_version_1(tmp_path / "labels", demo.image_root)
    data = _data(tiny_cfg, str(tmp_path / "train.json"), demo.image_root, p=1.0, labels=str(tmp_path / "labels"))
    dataset = build_dataset(tiny_cfg, data, tokenizer)
    store = dataset.builder.labels
    assert dataset.stats.accepted == 4 and not dataset.builder.identity_problems
    for i, record in enumerate(dataset.records):
        row = store[record.id]
        assert "pixels" not in row and "pixels_side" not in row  # the stored targets are never read
        _check_ssft_answers(dataset[i]["input_ids"], tokenizer, row, x_lo_of(demo.image_root, record))


def _check_ssft_answers(ids: torch.Tensor, tokenizer, row: dict, rgb: np.ndarray) -> None:
    text = tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    pattern = r"USER: ((?:(?!USER: ).)*?) ASSISTANT: (<vq start>.*?<vq end>|<rgb start>.*?<rgb end>)"
    for question, answer in re.findall(pattern, text, re.S):
        if answer.startswith("<vq"):
            assert parse_vq(answer) == expected_vq(question, row)
        else:
            assert parse_px(answer) == expected_px(question, rgb)


def test_in_process_labels_match_the_label_computer(tiny_cfg, tokenizer, demo, tmp_path, computer):
    rows = json.loads(open(demo.instruct).read())[:5]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    data = _data(tiny_cfg, str(tmp_path / "train.json"), demo.image_root, p=1.0)
    dataset = build_dataset(tiny_cfg, data, tokenizer, label_fn=computer.label)
    assert dataset.stats.accepted == 5 and dataset.builder.recon == "pixels"
    for i, record in enumerate(dataset.records):
        direct = computer.label([load_image(demo.image_root, record.images[0], tiny_cfg.label.decode)])[0]
        assert dataset.builder.labels[record.id]["vq_indices"] == direct["vq_indices"]
        sample = dataset[i]
        assert sample["ssft"], record.id
        _check_ssft_answers(sample["input_ids"], tokenizer, direct, x_lo_of(demo.image_root, record))


def test_a_record_failing_mid_epoch_is_replaced_and_reported(tiny_cfg, tokenizer, demo, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(demo.image_root, root)
    rows = json.loads(open(demo.instruct).read())[:4]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    dataset = build_dataset(tiny_cfg, _data(tiny_cfg, str(tmp_path / "train.json"), str(root)), tokenizer)
    (root / rows[1]["image"]).unlink()  # gone after the up-front check
    sample = dataset[1]
    assert sample["id"] == rows[2]["id"] and sample["skipped"] == [(rows[1]["id"], "image_missing")]
    assert dataset.skipped == {"image_missing": 1}
    assert Collator(tokenizer.pad_token_id)([dataset[0], sample])["skipped"] == [(rows[1]["id"], "image_missing")]
