"""The tokenizer: the LLM's own, or a byte-level BPE trained offline for tiny runs.

Either way the image placeholder and the SSFT markers are added as special tokens, and (with
``ssft.vq_encoding=tokens``) one token per VQ codebook entry. The offline tokenizer is trained on a
fixed built-in corpus, saved with ``save_pretrained`` and loaded back with ``AutoTokenizer``, so it
goes through exactly the loading path of a real one.

A folder with only a sentencepiece ``tokenizer.model`` (Vicuna, LLaMA-2: a ``LlamaTokenizer`` config and
no ``tokenizer.json``) is converted to a fast tokenizer on load, which needs ``sentencepiece`` and
``protobuf``; without them transformers falls through to an unrelated ``tiktoken`` error, so their
absence is reported first, by name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from vlsa import tokens
from vlsa.config import TokenizerConfig
from vlsa.io import storage

BOS, EOS = "<s>", "</s>"

# Enough English, digits and chat-template words that the BPE learns useful merges; byte-level
# BPE still encodes any text, so the corpus only affects how many tokens a text takes.
_CORPUS = """
A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful,
detailed, and polite answers to the user's questions. USER: ASSISTANT: system user assistant
What is the color of the shape in the image? What shape is shown? How many shapes are there?
Where is the shape? Answer the question using a single word or phrase. Describe the image briefly.
red green blue yellow purple orange white black gray cyan magenta brown pink
circle square triangle cross ring star rectangle diamond one two three four five six
left right top bottom upper lower center middle quarter of this image corner
The image shows a small large shape on a background. There is are the a an of in on at with and
Note that the image resolution is so you should generate indices pixel RGB value values VQ
Please provide give tell list the for each every all pixels in this image from top left to bottom right
Provide the VQ indices that would represent the essential features of this image capturing its key
0 1 2 3 4 5 6 7 8 9 10 11 12 16 20 24 32 48 64 96 100 128 200 255 256 336 512 672 1024 1764 4096
[[0, 0, 0], [255, 255, 255], [128, 64, 32]] 12, 345, 6789, 1, 2, 3 yes no Yes No true false
"""


def tokenizer_source(cfg: TokenizerConfig, cache_dir: str) -> str:
    """The directory the tokenizer is loaded from (trained and saved here first for tiny runs)."""
    if cfg.path:
        return str(storage.local_copy(cfg.path, cache_dir))
    key = hashlib.sha256(json.dumps([cfg.vocab_size, _CORPUS, tokens.SPECIAL_TOKENS]).encode()).hexdigest()[:12]
    target = Path(cache_dir).expanduser() / "tiny" / f"tokenizer-{key}"
    if not (target / "tokenizer.json").is_file():
        _train_offline(cfg.vocab_size).save_pretrained(target)
    return str(target)


SENTENCEPIECE_NEEDS = {"sentencepiece": "sentencepiece", "google.protobuf": "protobuf"}
"""Modules (-> pip package) that converting a sentencepiece ``tokenizer.model`` needs."""


def check_conversion_packages(source: str) -> None:
    """``ImportError`` naming the package when ``source`` holds only a sentencepiece model and a
    package its conversion needs is missing. A hub name cannot be looked into before it is fetched:
    ``build_tokenizer`` names the missing package when transformers' conversion then fails."""
    folder = Path(source).expanduser()
    if not (folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file():
        return
    for module, package in SENTENCEPIECE_NEEDS.items():
        if _missing(module):
            raise ImportError(
                f"the tokenizer at {source} is a sentencepiece tokenizer.model without tokenizer.json; "
                f"converting it needs the package {package!r} (pip install {package}, pinned in requirements.txt)"
            )


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent package missing, or a module blocked in sys.modules
        return True


def _train_offline(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[tokens.PAD_TOKEN, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([line for line in _CORPUS.splitlines() if line.strip()] * 4, trainer=trainer)
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=tokens.PAD_TOKEN, unk_token=None
    )


def build_tokenizer(cfg: TokenizerConfig, cache_dir: str, vq_codes: int = 0):
    """Load the tokenizer and add the project's special tokens (and ``vq_codes`` code tokens)."""
    from transformers import AutoTokenizer

    source = tokenizer_source(cfg, cache_dir)
    check_conversion_packages(source)
    try:
        tok = AutoTokenizer.from_pretrained(source, use_fast=True)
    except ValueError as err:  # a hub name is only seen once downloaded: name the package there too
        missing = [package for module, package in SENTENCEPIECE_NEEDS.items() if _missing(module)]
        if "tiktoken" in str(err) and missing:
            raise ImportError(f"loading the tokenizer {source} needs the package(s) {missing}: {err}") from err
        raise
    extra = list(tokens.SPECIAL_TOKENS) + [tokens.vq_code_token(i) for i in range(vq_codes)]
    tok.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
    if tok.pad_token is None:  # LLaMA-3 and Vicuna ship without one; padding is masked anyway
        tok.add_special_tokens({"pad_token": tokens.PAD_TOKEN})
    if cfg.chat_template:
        tok.chat_template = cfg.chat_template
    return tok
