"""Batch answering of a LLaVA question file with plain PyTorch (greedy decoding, temperature 0).

Questions come in LLaVA's question format, one JSON object a line::

    {"question_id": ..., "image": "rel/path.jpg", "text": "What is ...?", "category": "..."}

(``image`` and ``category`` optional). Each question is posed as one user turn in the chat template
(``<image>`` is put before the text when the question has an image and names none) and answered
greedily, as the paper does for reproducibility. Answers come out in LLaVA's answer format::

    {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}

``prompt`` is the question text (as LLaVA's ``model_vqa`` writes it). ``answer_id`` is derived from
the model id, question id and answer, so the same model gives the same file twice. An image that
cannot be read is answered with an empty text and its rejection reason in ``metadata.error``, so
one bad file never stops a benchmark and every question still has a row.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch

from vlsa.config import Config, DecodeConfig, load_config
from vlsa.data.templates import build_template
from vlsa.io import storage
from vlsa.io.image import ImageRejected, decode_image
from vlsa.io.records import RecordRejected, Turn, USER, read_image_bytes
from vlsa.model.builder import build_model
from vlsa.model.export import CONFIG_NAME, is_export, load_inference_model
from vlsa.model.export_hf import INFO_NAME
from vlsa.tokens import IMAGE_TOKEN
from vlsa.train.checkpoint import WEIGHTS, has_weights, load_weights

_ANSWER_NAMESPACE = uuid.UUID("6f1c2a4e-3d5b-4f7a-9c8e-1b2d3e4f5a6b")


# ------------------------------------------------------------------------------------------ questions


def check_question(row: object, line: int, source: str = "questions") -> dict:
    """A question record with ``question_id``, string ``text`` and optional string ``image``."""
    if not isinstance(row, dict):
        raise ValueError(f"{source}: line {line} is a JSON {type(row).__name__}, expected an object")
    if row.get("question_id") is None:
        raise ValueError(f"{source}: line {line} has no 'question_id' (keys: {sorted(row)})")
    for key, required in (("text", True), ("image", False)):
        value = row.get(key)
        if (required or value is not None) and not isinstance(value, str):
            raise ValueError(
                f"{source}: line {line} (question_id {row['question_id']!r}) field {key!r} must be a string, "
                f"got {type(value).__name__}"
            )
    return row


def read_questions(uri: str) -> list[dict]:
    """The questions of a LLaVA question file (JSONL, or a JSON list), local or ``s3://``."""
    text = storage.read_bytes(uri).decode("utf-8-sig")
    if text.lstrip().startswith("["):
        rows = list(enumerate(json.loads(text), start=1))
    else:
        rows = []
        for line, raw in enumerate(text.splitlines(), start=1):
            if raw.strip():
                try:
                    rows.append((line, json.loads(raw)))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{uri}: line {line} is not valid JSON: {err.msg}") from None
    questions = [check_question(row, line, uri) for line, row in rows]
    seen: dict[str, int] = {}
    for line, q in zip((line for line, _ in rows), questions):
        key = str(q["question_id"])
        if key in seen:
            raise ValueError(f"{uri}: question_id {q['question_id']!r} on line {line} repeats line {seen[key]}")
        seen[key] = line
    return questions


def write_answers(rows: Iterable[dict], uri: str) -> str:
    """Write answer rows as JSONL (atomically for local files); returns ``uri``."""
    storage.write_bytes(uri, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    return uri


# ------------------------------------------------------------------------------------------ prompts


def user_text(text: str, has_image: bool) -> str:
    """The user turn: ``<image>`` first when the question has an image and its text names none."""
    if has_image and IMAGE_TOKEN not in text:
        return f"{IMAGE_TOKEN}\n{text}"
    if not has_image and IMAGE_TOKEN in text:
        raise ValueError(f"question text names {IMAGE_TOKEN} but the question has no image: {text[:80]!r}")
    return text


def answer_id(model_id: str, question_id, text: str) -> str:
    """A stable id of one answer (LLaVA uses a random one; a stable one keeps reruns identical)."""
    return uuid.uuid5(_ANSWER_NAMESPACE, json.dumps([model_id, str(question_id), text])).hex


def pack_images(views: list[tuple[torch.Tensor, torch.Tensor]], images: list | None = None) -> dict[str, torch.Tensor]:
    """``pixel_lo`` (N, 3, s, s), ``pixel_hi`` (N, M, 3, s, s) and ``tile_mask`` (N, M) from per-image views,
    and ``image_sizes`` (N, 2), each original (height, width), when the PIL ``images`` are given."""
    most = max(hi.shape[0] for _, hi in views)
    lo = torch.stack([lo for lo, _ in views])  # (N, 3, s, s)
    hi = lo.new_zeros(len(views), most, *lo.shape[1:])  # (N, M, 3, s, s)
    mask = torch.zeros(len(views), most, dtype=torch.bool)  # (N, M)
    for n, (_, tiles) in enumerate(views):
        hi[n, : tiles.shape[0]], mask[n, : tiles.shape[0]] = tiles, True
    packed = {"pixel_lo": lo, "pixel_hi": hi, "tile_mask": mask}
    if images is not None:
        packed["image_sizes"] = torch.tensor([[im.height, im.width] for im in images], dtype=torch.long)  # (N, 2)
    return packed


# ------------------------------------------------------------------------------------------ answering


@dataclass
class Answerer:
    """Greedy answers of one model: ``answer(conversations, images)`` and ``rows(questions, images)``."""

    model: torch.nn.Module
    tokenizer: object = None
    template: str = "vicuna_v1"
    max_new_tokens: int = 16
    model_id: str = "vlsa"
    _chat: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.tokenizer = self.tokenizer if self.tokenizer is not None else self.model.tokenizer
        self._chat = build_template(self.template, self.tokenizer)
        self.model.eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def stop_ids(self) -> list[int]:
        """End-of-answer token ids: EOS, and the template's stop marker when it is one token."""
        ids = [self.tokenizer.eos_token_id]
        stop = self._chat.stop.strip()
        if stop and stop in self.tokenizer.get_vocab():
            ids.append(self.tokenizer.convert_tokens_to_ids(stop))
        return sorted({i for i in ids if i is not None})

    def prompt(self, turns: list[Turn]) -> str:
        """The rendered prompt of a conversation ending in a user turn."""
        return self._chat.prompt(turns)

    def _cut(self, text: str) -> str:
        stop = self._chat.stop
        if stop and stop in text:  # e.g. "\n" of the plain template, which is no special token
            text = text[: text.index(stop)]
        return text.strip()

    @torch.no_grad()
    def answer(self, conversations: list[list[Turn]], images: list[list], max_new_tokens: int = 0) -> list[str]:
        """Greedy answers to conversations (each ends in a user turn) with their PIL images in order.

        ``max_new_tokens`` overrides the answerer's budget for this call (0: keep it).
        """
        if len(conversations) != len(images):
            raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")
        prompts = [self.prompt(turns) for turns in conversations]
        enc = self.tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        device, encoder = self.device, self.model.encoder()
        flat = [image for per in images for image in per]
        pixels = {k: v.to(device) for k, v in pack_images([encoder(im) for im in flat], flat).items()} if flat else {}
        new = self.model.generate(
            enc.input_ids.to(device), enc.attention_mask.to(device),
            torch.tensor([len(per) for per in images], dtype=torch.long, device=device), **pixels,
            max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=self.stop_ids(), pad_token_id=self.tokenizer.pad_token_id,
        )  # (B, T_new)
        return [self._cut(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def rows(self, questions: list[dict], images: list) -> list[dict]:
        """Answer rows for questions whose images are given (None: text-only question)."""
        turns = [[Turn(USER, user_text(q["text"], im is not None))] for q, im in zip(questions, images)]
        texts = self.answer(turns, [[im] if im is not None else [] for im in images])
        return [self.row(q, text) for q, text in zip(questions, texts)]

    def row(self, question: dict, text: str, error: str = "") -> dict:
        """One LLaVA answer-file row."""
        metadata = {"template": self.template, "max_new_tokens": self.max_new_tokens, "temperature": 0}
        if "category" in question:
            metadata["category"] = question["category"]
        if error:
            metadata["error"] = error
        return {
            "question_id": question["question_id"], "prompt": question["text"], "text": text,
            "answer_id": answer_id(self.model_id, question["question_id"], text), "model_id": self.model_id,
            "metadata": metadata,
        }  # fmt: skip


def load_question_image(question: dict, image_root: str, decode: DecodeConfig):
    """(PIL image or None, rejection reason or "") of one question."""
    if question.get("image") is None:
        return None, ""
    try:
        return decode_image(read_image_bytes(image_root, question["image"], decode.max_bytes), decode), ""
    except RecordRejected as err:
        return None, err.reason
    except ImageRejected as err:
        return None, f"image_{err.reason}"


def answer_batch(answerer: Answerer, questions: list[dict], image_root: str, decode: DecodeConfig) -> list[dict]:
    """Rows of one batch: readable questions answered in one call, unreadable ones with ``metadata.error``."""
    loaded = [load_question_image(q, image_root, decode) for q in questions]
    good = [i for i, (_, err) in enumerate(loaded) if not err]
    rows: dict[int, dict] = {}
    if good:
        answered = answerer.rows([questions[i] for i in good], [loaded[i][0] for i in good])
        rows.update(zip(good, answered))
    for i, (_, err) in enumerate(loaded):
        if err:
            rows[i] = answerer.row(questions[i], "", error=err)
    return [rows[i] for i in range(len(questions))]


def batches(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of ``size`` items."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start:start + size]


def answer_questions(answerer: Answerer, questions: list[dict], image_root: str, *, batch_size: int = 8,
                     decode: DecodeConfig | None = None) -> list[dict]:
    """Answer rows for every question, in question order, ``batch_size`` questions per model call."""
    decode = decode or DecodeConfig()
    return [row for chunk in batches(questions, batch_size)
            for row in answer_batch(answerer, chunk, image_root, decode)]


# ------------------------------------------------------------------------------------------ models


def model_id_of(path: str) -> str:
    """The model id written into answer files: the last path component of the model folder."""
    return Path(str(path).rstrip("/")).name or "vlsa"


def load_model(path: str, cfg: Config | None = None, device: str = ""):
    """A model in eval mode from an exported inference folder (any ``vlsa.export`` format: ``vlsa``, ``llava``,
    ``llava_next`` or ``package``) or a stage-end checkpoint.

    A training checkpoint holds weights only: its model is built from ``cfg`` (the run's config,
    default the ``tiny`` preset) and the weights are loaded into it. ``device`` (default: CUDA when
    present) is where the model goes; on a GPU it runs in bf16 unless ``train.precision=fp32``.
    """
    cfg = cfg or load_config("tiny")

    if is_export(path):
        model = load_inference_model(path, cfg.model.cache_dir)
    elif has_weights(path):
        model = _checkpoint_model(path, cfg)
    else:
        raise FileNotFoundError(f"{path} is neither an exported model (no {INFO_NAME} or {CONFIG_NAME}) nor a "
                                f"stage-end training checkpoint (no {WEIGHTS})")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and cfg.train.precision != "fp32":
        model = model.to(torch.bfloat16)
    return model.to(device).eval()


def _checkpoint_model(path: str, cfg: Config):
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(load_weights(path), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit the config (preset {cfg.preset!r}): {len(missing)} missing keys "
            f"(first {missing[:3]}), {len(unexpected)} unexpected keys (first {unexpected[:3]})"
        )
    return model


def run_inference(model_path: str, questions_uri: str, image_root: str, answers_uri: str,
                  cfg: Config | None = None) -> list[dict]:
    """Load a model, answer a question file with the config's ``eval`` settings and write the answer file."""
    cfg = cfg or load_config("tiny")
    answerer = Answerer(load_model(model_path, cfg), template=cfg.eval.template,
                        max_new_tokens=cfg.eval.max_new_tokens, model_id=model_id_of(model_path))
    rows = answer_questions(answerer, read_questions(questions_uri), image_root, batch_size=cfg.eval.batch_size,
                            decode=cfg.label.decode)
    write_answers(rows, answers_uri)
    return rows
