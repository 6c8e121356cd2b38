"""A ZeRO-3 stage builds the model partitioned and reads its stage-start weights slice by slice.

Two gloo processes build the tiny model under ``deepspeed.zero.Init`` (as a ZeRO-3 stage does) and
load a previous stage's ``model.safetensors`` into it. The weights saved differ from what the build
itself produces, so equal gathered values prove the file was read; the loader's own count of the
values each rank read proves no rank read (or held) the whole file.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from vlsa.model import weights

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, cache_dir: str, checkpoint: str, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        Path(out, f"rank{rank}.json").write_text(json.dumps(_build_and_load(cache_dir, checkpoint)))
    finally:
        dist.destroy_process_group()


def _build_and_load(cache_dir: str, checkpoint: str) -> dict:
    import deepspeed

    import vlsa
    from vlsa.model.builder import build_model
    from vlsa.train import checkpoint as ckpt
    from vlsa.train.deepspeed_config import deepspeed_config

    cfg = vlsa.load_config("tiny", [f"model.cache_dir={cache_dir}"])
    stage = cfg.train.stages[-1]
    assert stage.zero_stage == 3
    ds_config = deepspeed_config(cfg, stage, WORLD, "cpu")
    model = build_model(cfg, zero3=ds_config)
    params = dict(model.named_parameters())
    whole_after_build = [n for n, p in params.items() if not hasattr(p, "ds_tensor") or p.numel()]
    with ckpt.local_weights(checkpoint, cache_dir) as path:
        stats = weights.load_into(model, [path], strict=True)
        saved = weights.read(path)
    unequal = []
    for name, param in params.items():
        with deepspeed.zero.GatheredParameters([param]):
            if not torch.equal(param.detach(), saved[name]):
                unequal.append(name)
    whole = sum(p.numel() for p in params.values() if not hasattr(p, "ds_tensor"))
    whole += sum(b.numel() for n, b in model.named_buffers() if n in saved)
    return {"whole_after_build": whole_after_build, "unequal": unequal, "whole_elements": whole,
            "resaved_unequal": _resave(model, ds_config, saved, Path(checkpoint).parent / "resaved"),
            "params": len(params), "elements_read": stats.elements_read, "elements_total": stats.elements_total,
            "partitioned": stats.partitioned, "largest_read": stats.largest_read,
            "largest_tensor": max(p.ds_numel for p in params.values())}


def _resave(model, ds_config: dict, saved: dict, folder: Path) -> list[str] | None:
    """Stage-end weights written from the engine (collective); rank 0 reads them back: names that differ."""
    import torch.distributed as dist

    from vlsa.model.zero3 import import_deepspeed
    from vlsa.train import checkpoint as ckpt

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    engine = import_deepspeed().initialize(model=model, optimizer=optimizer, config=ds_config)[0]
    rank = dist.get_rank()
    if rank == 0:
        folder.mkdir()
    ckpt.save_weights(engine, folder, rank)
    if rank != 0:
        return None
    again = weights.read(folder / ckpt.WEIGHTS)
    return sorted(set(saved) ^ set(again)) + [k for k in saved if k in again and not torch.equal(saved[k], again[k])]


@pytest.fixture(scope="module")
def previous_stage(cache_dir, tmp_path_factory):
    """A stage-end checkpoint folder whose weights differ from a fresh build's."""
    import vlsa
    from vlsa.model.builder import build_model
    from vlsa.train import checkpoint as ckpt

    cfg = vlsa.load_config("tiny", [f"model.cache_dir={cache_dir}"])
    model = build_model(cfg)  # also saves the tiny parts, so the workers only read them
    generator = torch.Generator().manual_seed(1)
    state = {k: v + torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("ckpt") / "00_stage1_step00000003"
    folder.mkdir()
    weights.save(state, folder / ckpt.WEIGHTS)
    return folder


@pytest.mark.integration
def test_zero3_build_loads_stage_start_weights_per_rank_slice(previous_stage, cache_dir, tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_worker, args=(_free_port(), cache_dir, str(previous_stage), str(tmp_path)), nprocs=WORLD,
                       start_method="spawn", join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for r in ranks:
        assert r["whole_after_build"] == [], "parameters left whole by the ZeRO-3 build"
        assert r["unequal"] == [], f"{len(r['unequal'])} of {r['params']} parameters differ from the saved weights"
        assert r["partitioned"] == r["params"]
        # the file's partitioned values are split between the ranks; only the few unpartitioned ones are read twice
        assert r["elements_read"] < 0.55 * r["elements_total"]
        assert r["largest_read"] <= (r["largest_tensor"] + 1) // 2
    assert ranks[0]["resaved_unequal"] == []  # the stage end writes back exactly what the stage started from
    total = ranks[0]["elements_total"]
    assert sum(r["elements_read"] for r in ranks) == total + (WORLD - 1) * ranks[0]["whole_elements"]
