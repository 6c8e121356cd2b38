"""A Vicuna-style tokenizer (sentencepiece ``tokenizer.model``, ``LlamaTokenizer`` config, no
``tokenizer.json``) loads through the project's loader, renders and labels with vicuna_v1 and SSFT,
and trains a step of the tiny model.

The sentencepiece model is trained here, offline, on a small corpus: the same layout as
``lmsys/vicuna-7b-v1.5`` at a tiny size.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_data_templates import supervised_runs

import vlsa
from vlsa import tokens
from vlsa.config import SSFTConfig, TokenizerConfig
from vlsa.data.collate import Collator
from vlsa.data.dataset import build_dataset
from vlsa.io.records import Turn
from vlsa.data.templates import build_template, encode
from vlsa.model.params import apply_stage
from vlsa.model.tokenizer import build_tokenizer

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What color is the shape in the image? ASSISTANT: The shape is red.",
    "USER: Which shape is shown? ASSISTANT: A green square on a blue background.",
    "Provide the VQ indices of the upper left quarter of this image: 12, 7, 63, 0, 41",
    "List the RGB values of the pixels: [[255, 0, 0], [0, 128, 255]] circle triangle cross ring",
]


def vicuna_layout(folder: Path, vocab_size: int = 400) -> Path:
    """A sentencepiece BPE with byte fallback (as LLaMA's), saved as the Vicuna repository lays it out."""
    spm = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
              "pad_token": None, "model_max_length": 4096, "clean_up_tokenization_spaces": False, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    return folder


@pytest.fixture(scope="module")
def vicuna_dir(tmp_path_factory) -> Path:
    return vicuna_layout(tmp_path_factory.mktemp("vicuna") / "tokenizer")


@pytest.fixture(scope="module")
def sp_cfg(cache_dir, vicuna_dir):
    # a 400-piece vocabulary spends a token per digit: room for a conversation plus both SSFT turns
    room = ["model.llm.max_length=1024", "model.llm.init.max_position_embeddings=1024"]
    return vlsa.load_config("tiny", [f"model.cache_dir={cache_dir}", f"model.tokenizer.path={vicuna_dir}", *room])


@pytest.fixture(scope="module")
def sp_tokenizer(sp_cfg, cache_dir):
    return build_tokenizer(sp_cfg.model.tokenizer, cache_dir)


def test_the_layout_has_no_fast_tokenizer_file_and_loads_as_a_fast_tokenizer(vicuna_dir, sp_tokenizer):
    assert not (vicuna_dir / "tokenizer.json").exists()
    assert sp_tokenizer.is_fast and sp_tokenizer.bos_token == "<s>" and sp_tokenizer.eos_token == "</s>"
    for token in (*tokens.SPECIAL_TOKENS, tokens.PAD_TOKEN):  # added whole: each one id, never split
        ids = sp_tokenizer(f"a {token} b", add_special_tokens=False).input_ids
        assert sp_tokenizer.convert_tokens_to_ids(token) in ids, token
    assert sp_tokenizer.decode(sp_tokenizer("USER: red 1764", add_special_tokens=False).input_ids) == "USER: red 1764"


def test_vicuna_render_with_ssft_turns_labels_exactly_the_answers(sp_tokenizer):
    vq = f"{tokens.VQ_START}12, 7, 63{tokens.VQ_END}"
    turns = [
        Turn("user", "What color is the shape? <image>"), Turn("assistant", "The shape is red."),
        Turn("user", "Provide the VQ indices of the upper left quarter of this image.", ssft=True),
        Turn("assistant", vq, ssft=True),
    ]
    rendered = build_template("vicuna_v1", sp_tokenizer).render(turns)
    assert rendered.text.startswith("<s>A chat between") and "USER: <image>\nWhat color is the shape? ASSISTANT:" in rendered.text
    encoded = encode(rendered, sp_tokenizer, "sp")
    assert encoded.input_ids[0] == sp_tokenizer.bos_token_id and encoded.input_ids.count(sp_tokenizer.bos_token_id) == 1
    runs = supervised_runs(encoded, sp_tokenizer)
    assert [r.strip() for r in runs] == ["The shape is red.</s>", f"{vq}</s>"]
    assert sum(encoded.ssft_mask) == len(sp_tokenizer(f" {vq}</s>", add_special_tokens=False).input_ids)


def test_a_missing_conversion_package_is_an_error_naming_it(vicuna_dir, cache_dir, monkeypatch):
    for module, package in (("sentencepiece", "sentencepiece"), ("google.protobuf", "protobuf")):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, module, None)  # as if not installed
            with pytest.raises(ImportError, match=f"needs the package '{package}'"):
                build_tokenizer(TokenizerConfig(path=str(vicuna_dir)), cache_dir)


def test_a_failed_conversion_names_the_missing_package(vicuna_dir, cache_dir):
    """As for a hub name, whose files only transformers sees: the folder check is skipped and the
    conversion's own failure (about tiktoken) is reported as the missing package. Each package in a fresh
    process, so no earlier load has the conversion's modules imported already (both at once: half the wait).
    Loading a tokenizer needs no torch: it is kept out of these processes, whose start-up it would triple."""
    env = {**os.environ, "PYTHONPATH": str(Path(vlsa.__file__).parents[1])}
    runs = {}
    for module, package in (("sentencepiece", "sentencepiece"), ("google.protobuf", "protobuf")):
        code = (
            f"import sys; sys.modules[{module!r}] = None; sys.modules['torch'] = None\n"
            "from vlsa.config import TokenizerConfig\n"
            "from vlsa.model import tokenizer\n"
            "tokenizer.check_conversion_packages = lambda source: None\n"
            f"tokenizer.build_tokenizer(TokenizerConfig(path={str(vicuna_dir)!r}), {cache_dir!r})\n"
        )
        runs[package] = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, env=env)
    for package, run in runs.items():
        _, stderr = run.communicate(timeout=600)
        assert run.returncode != 0
        assert f"ImportError: loading the tokenizer {vicuna_dir} needs the package(s) ['{package}']" in stderr


def test_trains_a_step_with_the_sentencepiece_tokenizer(sp_cfg, demo):
    torch.manual_seed(0)
    cfg = copy.deepcopy(sp_cfg)
    model = vlsa.build_model(cfg)
    assert model.tokenizer.is_fast and not (Path(cfg.model.tokenizer.path) / "tokenizer.json").exists()
    data = copy.deepcopy(cfg.train.stages[1].data)  # vicuna_v1
    rows = json.loads(Path(demo.instruct).read_text())[:4]
    data.train, data.image_root = str(Path(demo.instruct).with_name("sp_train.json")), demo.image_root
    Path(data.train).write_text(json.dumps(rows))
    data.ssft = SSFTConfig(p_vq=1.0, p_px=1.0, max_target_tokens=64)
    dataset = build_dataset(cfg, data, model.tokenizer, model=model)
    samples = [dataset[i] for i in range(len(dataset))]
    assert dataset.stats.accepted == 4 and all(sorted(s["ssft"]) == ["px", "vq"] for s in samples)
    batch = Collator(model.tokenizer.pad_token_id)(samples[:2])
    groups = apply_stage(model, cfg.train.stages[1])
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    before = model.language_model.get_input_embeddings().weight.detach().clone()
    model.train()
    out = model(**{k: v for k, v in batch.items() if k not in ("ids", "skipped", "ssft")})
    out.loss.backward()
    optimizer.step()
    assert torch.isfinite(out.loss.detach()) and float(out.loss_lm.detach()) > 0 and batch["ssft_mask"].any()
    assert not torch.equal(before, model.language_model.get_input_embeddings().weight)
