"""The project's own consumers read every export kind: the chat command and the lmms-eval adapter's model side
answer from a ``llava`` / ``llava_next`` / ``vlsa`` folder exactly as the trained model does."""

from __future__ import annotations

import io

import pytest
from export_helpers import PROMPTS

from vlsa.chat import main as chat_main
from vlsa.eval.infer import Answerer, user_text
from vlsa.io.records import USER, Turn
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

