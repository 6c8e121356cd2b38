"""The project's own consumers read every export kind: the chat command and the lmms-eval adapter's model side
answer from a ``llava`` / ``llava_next`` / ``vlsa`` folder exactly as the trained model does."""

from __future__ import annotations

import io

import pytest
from export_helpers import PROMPTS

from vlsa.chat import main as chat_main
from vlsa.eval.infer import Answerer, user_text
from vlsa.data.templates import build_template, jinja_template
from vlsa.io.records import ASSISTANT, USER, Turn
from vlsa.eval.lmms_eval_adapter import VLSAEvalModel


@pytest.mark.parametrize("kind", ["vlsa", "llava", "llava_next"])
def test_chat_and_lmms_eval_answer_from_an_export(kind, trained, images, tmp_path):
    run = trained(kind)
    path = tmp_path / "image.png"
    images[0].save(path)
    question = PROMPTS[0].removeprefix("<image>\n")
    out = io.StringIO()
    assert chat_main(["--model", str(run.out), "--image", str(path), "--prompt", question, "--max-new-tokens", "5",
                      f"model.cache_dir={run.cfg.model.cache_dir}"], stdout=out) == 0
    trained_answerer = Answerer(run.model, template=run.cfg.eval.template, max_new_tokens=5)
    expected = trained_answerer.answer([[Turn(USER, user_text(question, True))]], [[images[0]]])
    assert out.getvalue().splitlines() == expected

    core = VLSAEvalModel(str(run.out), template=run.cfg.eval.template, max_new_tokens=5, device="cpu")
    assert core.generate([question], [[images[0]]], {"max_new_tokens": 5}) == expected



@pytest.mark.parametrize("kind", ["vlsa", "llava", "llava_next"])
def test_the_processors_chat_template_renders_the_training_prompt(kind, trained):
    from transformers import AutoProcessor

    run = trained(kind)
    processor = AutoProcessor.from_pretrained(str(run.out))
    answerer = Answerer(run.model, template=run.cfg.train.stages[-1].data.template)
    history = [Turn(USER, "<image>\nWhat is shown?"), Turn(ASSISTANT, "a red square"), Turn(USER, "What color?")]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a red square"}]},
                {"role": "user", "content": [{"type": "text", "text": "What color?"}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == answerer.prompt(history)


@pytest.mark.parametrize("name", ["vicuna_v1", "plain", "llama3", "chatml"])
def test_the_jinja_template_renders_each_training_template(name, trained):
    tokenizer = trained("vlsa").model.tokenizer
    history = [Turn(USER, "<image>\nWhat is it?"), Turn(ASSISTANT, "a cat"), Turn(USER, "Color?")]
    want = build_template(name, tokenizer).prompt(history)
    for first in ([{"type": "image"}, {"type": "text", "text": "What is it?"}], "<image>\nWhat is it?"):
        messages = [{"role": "user", "content": first}, {"role": "assistant", "content": "a cat"},
                    {"role": "user", "content": "Color?"}]
        got = tokenizer.apply_chat_template(messages, chat_template=jinja_template(name, tokenizer), tokenize=False,
                                            add_generation_prompt=True)
        assert got == want
