"""Plain-PyTorch batch answering: question-file parsing, answer-file format, determinism, bad images."""

from __future__ import annotations

import json

import pytest

from vlsa.config import DecodeConfig
from vlsa.io.records import USER, Turn
from vlsa.eval.infer import (
    Answerer,
    answer_questions,
    load_model,
    read_questions,
    run_inference,
    user_text,
    write_answers,
)
from vlsa.eval.score import score
from vlsa.eval.scorers._common import read_answer_file
from vlsa.tokens import IMAGE_TOKEN

ANSWER_KEYS = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}


@pytest.fixture(scope="module")
def answerer(exported_model, cache_dir):
    """The exported tiny model, loaded back through ``load_model``."""
    from vlsa import load_config

    model = load_model(exported_model, load_config("tiny", [f"model.cache_dir={cache_dir}"]), device="cpu")
    assert model.recon_head is None  # the export carries no training-only parts
    return Answerer(model, template="vicuna_v1", max_new_tokens=3, model_id="tiny-vlsa")


def test_read_questions_accepts_llava_format_and_names_bad_lines(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 7, "image": "a.png", "text": "What?", "category": "c"}\n\n'
                    '{"question_id": "x", "text": "Text only?"}\n')
    questions = read_questions(str(path))
    assert [q["question_id"] for q in questions] == [7, "x"]
    path.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 2, "image": 5, "text": "b"}\n')
    with pytest.raises(ValueError, match=r"line 2 \(question_id 2\) field 'image' must be a string, got int"):
        read_questions(str(path))
    path.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 1, "text": "b"}\n')
    with pytest.raises(ValueError, match="question_id 1 on line 2 repeats line 1"):
        read_questions(str(path))
    path.write_text('{"text": "a"}\n')
    with pytest.raises(ValueError, match="line 1 has no 'question_id'"):
        read_questions(str(path))


def test_user_turn_puts_the_image_first_once():
    assert user_text("What color?", has_image=True) == f"{IMAGE_TOKEN}\nWhat color?"
    assert user_text(f"What color?\n{IMAGE_TOKEN}", has_image=True) == f"What color?\n{IMAGE_TOKEN}"
    assert user_text("Hello", has_image=False) == "Hello"
    with pytest.raises(ValueError, match="has no image"):
        user_text(f"{IMAGE_TOKEN}\nWhat?", has_image=False)


def test_prompt_is_the_vicuna_user_turn(answerer):
    prompt = answerer.prompt([Turn(USER, user_text("What color?", True))])
    assert prompt.endswith(f"USER: {IMAGE_TOKEN}\nWhat color? ASSISTANT:")
    assert answerer.stop_ids() == [answerer.tokenizer.eos_token_id]


def test_every_question_answered_in_llava_format_and_deterministic(answerer, demo):
    questions = read_questions(demo.eval)
    first = answer_questions(answerer, questions, demo.image_root, batch_size=6)
    again = answer_questions(answerer, questions, demo.image_root, batch_size=6)
    assert [r["question_id"] for r in first] == [q["question_id"] for q in questions]
    for row, question in zip(first, questions):
        assert set(row) == ANSWER_KEYS
        assert row["prompt"] == question["text"] and row["model_id"] == "tiny-vlsa"
        assert isinstance(row["text"], str) and "error" not in row["metadata"]
        assert row["metadata"]["category"] == question["category"] and row["metadata"]["temperature"] == 0
    assert first == again  # greedy decoding and stable answer ids: identical files
    assert len({r["answer_id"] for r in first}) == len(first)


def test_batching_does_not_change_the_count_or_order(answerer, demo):
    questions = read_questions(demo.eval)[:3]
    one_by_one = answer_questions(answerer, questions, demo.image_root, batch_size=1)
    batched = answer_questions(answerer, questions, demo.image_root, batch_size=3)
    assert [r["question_id"] for r in one_by_one] == [r["question_id"] for r in batched]
    # left padding is dropped before the LLM, so the first greedy token agrees across batchings
    assert all(a["text"][:1] == b["text"][:1] for a, b in zip(one_by_one, batched))


def test_unreadable_and_missing_images_get_an_error_row_not_a_crash(answerer, demo, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    questions = [
        {"question_id": 1, "image": "broken.png", "text": "What color?"},
        {"question_id": 2, "image": "missing.png", "text": "What shape?"},
        {"question_id": 3, "text": "Say something."},
    ]
    rows = answer_questions(answerer, questions, str(tmp_path), batch_size=8, decode=DecodeConfig())
    assert [r["question_id"] for r in rows] == [1, 2, 3]
    assert rows[0]["text"] == "" and rows[0]["metadata"]["error"].startswith("image_")
    assert rows[1]["metadata"]["error"] == "image_missing"
    assert "error" not in rows[2]["metadata"]  # text-only questions are answered without an image


def test_run_inference_writes_a_scorable_answer_file(exported_model, demo, cache_dir, tmp_path):
    from vlsa import load_config

    cfg = load_config("tiny", [f"model.cache_dir={cache_dir}", "eval.max_new_tokens=4", "eval.batch_size=6"])
    out = str(tmp_path / "answers.jsonl")
    rows = run_inference(exported_model, demo.eval, demo.image_root, out, cfg)
    written = read_answer_file(out)
    assert written == json.loads(json.dumps(rows)) and len(written) == len(read_questions(demo.eval))
    assert {r["model_id"] for r in written} == {"tiny-vlsa"}
    metrics = score("demo", out, demo.eval)
    assert metrics["n"] == len(written) and 0.0 <= metrics["accuracy"] <= 1.0


def test_write_answers_round_trips(tmp_path):
    rows = [{"question_id": "q", "prompt": "p", "text": "é", "answer_id": "a", "model_id": "m", "metadata": {}}]
    path = write_answers(rows, str(tmp_path / "sub" / "a.jsonl"))
    assert read_answer_file(path) == rows
