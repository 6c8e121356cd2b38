"""VDEP pre-training stages train on doubled data: every sample once in each mode (paper 003)."""

from __future__ import annotations

from collections import Counter

import vlsa
from vlsa.data.doubling import DoubledDataset
from vlsa.model.builder import build_model_tokenizer
from vlsa.train.data import build_stage_data, doubles_for_vdep


def test_only_vdep_pretraining_stages_double():
    vdep = vlsa.load_config("vdep")
    stage1, stage2 = vdep.train.stages
    assert doubles_for_vdep(vdep, stage1) and not doubles_for_vdep(vdep, stage2)  # Stage II: LLaVA's objective
    assert not doubles_for_vdep(vlsa.load_config("llava_next_anyres"), stage1)


def test_a_vdep_stage_sees_each_record_once_per_mode(cache_dir, train_demo):
    cfg = vlsa.load_config("tiny", [
        f"model.cache_dir={cache_dir}", "model.vdep.enabled=true", "model.recon.enabled=false",
        f"train.stages.0.data.train={train_demo.pretrain}", f"train.stages.0.data.image_root={train_demo.image_root}",
        "train.stages.0.lr={projector: 1.0e-3}", "train.stages.0.micro_batch=2", "train.stages.0.global_batch=2",
        "train.stages.1.lr={projector: 1.0e-3, llm: 1.0e-3}",
    ])
    data = build_stage_data(cfg, cfg.train.stages[0], build_model_tokenizer(cfg), rank=0, world_size=1)
    assert isinstance(data.dataset, DoubledDataset) and len(data.dataset) == 2 * len(data.dataset.base)
    seen = Counter()
    for batch in data.loader:
        seen.update(zip(batch["ids"], batch["vdep_mode"].tolist()))
    records = {r.id for r in data.dataset.records}
    assert seen == Counter({(r, mode): 1 for r in records for mode in (False, True)})
