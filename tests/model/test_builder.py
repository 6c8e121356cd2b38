"""Loading every part through from_pretrained: tiny builds are saved and reloaded; paths, subfolders and s3://."""

from __future__ import annotations

import threading

import pytest
import torch
from diffusers import SD3Transformer2DModel
from model_helpers import make_batch, solid, tiny_config
from transformers import SiglipVisionModel

import vlsa
from vlsa.config import ComponentConfig
from vlsa.io import storage
from vlsa.model.builder import load_component

DENOISER = {"sample_size": 8, "patch_size": 2, "in_channels": 4, "out_channels": 4, "num_layers": 1,
            "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 16,
            "caption_projection_dim": 16, "pooled_projection_dim": 8, "pos_embed_max_size": 8}


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_part_is_saved_then_loaded_back(tmp_path):
    part = ComponentConfig(init=DENOISER)
    first = load_component(part, SD3Transformer2DModel, name="denoiser", cache_dir=str(tmp_path), seed=3)
    saved = list((tmp_path / "tiny").iterdir())
    assert [p.name.split("-")[0] for p in saved] == ["denoiser"]
    assert {"config.json", "diffusion_pytorch_model.safetensors"} <= {p.name for p in saved[0].iterdir()}
    again = load_component(part, SD3Transformer2DModel, name="denoiser", cache_dir=str(tmp_path), seed=3)
    assert same_weights(first, again)
    other = load_component(part, SD3Transformer2DModel, name="denoiser", cache_dir=str(tmp_path), seed=4)
    assert not same_weights(first, other)


def test_concurrent_builds_share_one_folder(tmp_path):
    part, results, errors = ComponentConfig(init=DENOISER), [], []

    def build():
        try:
            results.append(load_component(part, SD3Transformer2DModel, name="d", cache_dir=str(tmp_path), seed=0))
        except Exception as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.name for p in (tmp_path / "tiny").iterdir() if p.name.startswith(".")] == []
    assert len(list((tmp_path / "tiny").iterdir())) == 1
    assert same_weights(results[0], results[1]) and same_weights(results[0], results[2])


def _build_on_rank(rank: int, store: str, cache_dir: str, sums) -> None:
    import torch.distributed as dist
    from transformers import CLIPVisionModel

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        part = ComponentConfig(init={"image_size": 16, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                                     "num_hidden_layers": 1, "num_attention_heads": 2})
        model = load_component(part, CLIPVisionModel, name="vision", cache_dir=f"{cache_dir}/{rank}", seed=0)
        sums[rank] = float(sum(p.double().sum() for p in model.parameters()))
    finally:
        dist.destroy_process_group()


@pytest.mark.integration  # a two-process torch.distributed group
def test_every_distributed_rank_builds_its_tiny_part(tmp_path):
    """Each rank builds into its own cache (workers on different nodes do not share a disk), although
    transformers' save_pretrained writes nothing on a non-zero rank."""
    import torch.multiprocessing as mp

    sums = mp.Manager().dict()
    mp.spawn(_build_on_rank, args=(str(tmp_path / "store"), str(tmp_path / "cache"), sums), nprocs=2)
    for rank in (0, 1):
        (folder,) = (tmp_path / "cache" / str(rank) / "tiny").iterdir()
        assert {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    assert sums[0] == sums[1]


def test_path_with_subfolder(tmp_path):
    made = SD3Transformer2DModel(**DENOISER)
    made.save_pretrained(tmp_path / "pipeline" / "transformer")
    part = ComponentConfig(path=str(tmp_path / "pipeline"), subfolder="transformer")
    loaded = load_component(part, SD3Transformer2DModel, name="denoiser", cache_dir=str(tmp_path / "cache"), seed=0)
    assert same_weights(made, loaded)


@pytest.mark.integration
def test_s3_path_is_fetched_into_the_cache(tmp_path, monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        storage.s3_client().create_bucket(Bucket="models")
        made = SD3Transformer2DModel(**DENOISER)
        made.save_pretrained(tmp_path / "local" / "transformer")
        storage.upload_dir(tmp_path / "local", "s3://models/sd3-tiny")
        part = ComponentConfig(path="s3://models/sd3-tiny", subfolder="transformer")
        loaded = load_component(part, SD3Transformer2DModel, name="denoiser", cache_dir=str(tmp_path / "cache"), seed=0)
        assert same_weights(made, loaded)
        assert list((tmp_path / "cache" / "s3").iterdir())
    finally:
        server.stop()


def test_siglip_tower_in_the_model(cache_dir):
    siglip = "{image_size: 32, patch_size: 8, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4}"
    model = vlsa.build_model(tiny_config(cache_dir, "model.vision.kind=siglip", f"model.vision.init={siglip}"))
    assert isinstance(model.vision_tower, SiglipVisionModel)
    assert model.vision_features(torch.randn(1, 3, 32, 32)).shape == (1, 16, 32)  # no CLS token to drop
    batch = make_batch(model, [solid(70, 40)], ["<image>\nwhat color? red"])
    assert model(**batch).loss_rec is not None
