"""Chat templates: only assistant spans are supervised, for every template; misaligned labels are rejected."""

from __future__ import annotations

import copy
import json

import pytest

from vlsa.data.dataset import build_dataset
from vlsa.data.templates import Rendered, build_template, encode
from vlsa.io.records import RecordRejected, TooManyRejected, Turn
from vlsa.tokens import IGNORE_INDEX

TURNS = [
    Turn("user", "<image>\nWhat color are the shapes in the image?"),
    Turn("assistant", "red"),
    Turn("user", "How many shapes are there?"),
    Turn("assistant", "Two shapes."),
]
EXPECTED = {
    "plain": ["red\n", "Two shapes.\n"],
    "vicuna_v1": [" red</s>", " Two shapes.</s>"],
    "llama3": ["red<|eot_id|>", "Two shapes.<|eot_id|>"],
    "chatml": ["red<|im_end|>\n", "Two shapes.<|im_end|>\n"],
}


def supervised_runs(encoded, tokenizer) -> list[str]:
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_labels_supervise_exactly_the_assistant_spans(name, tokenizer):
    template = build_template(name, tokenizer)
    rendered = template.render(TURNS)
    encoded = encode(rendered, tokenizer, "r1")
    assert len(encoded.input_ids) == len(encoded.labels) == len(encoded.ssft_mask)
    assert supervised_runs(encoded, tokenizer) == EXPECTED[name]
    unsupervised = tokenizer.decode([t for t, lab in zip(encoded.input_ids, encoded.labels) if lab == IGNORE_INDEX])
    assert "red" not in unsupervised and "Two" not in unsupervised
    if name != "plain":  # plain drops the instruction of image turns, as LLaVA's Stage I format
        assert "What color are the shapes in the image?" in unsupervised
    assert "How many shapes are there?" in unsupervised
    assert not any(encoded.ssft_mask)
    # the generation prompt is exactly the text before the last supervised span
    prompt = template.prompt(TURNS[:3])
    assert rendered.text.startswith(prompt) and rendered.text[len(prompt):] == EXPECTED[name][1]


def test_ssft_turns_are_marked_in_the_mask(tokenizer):
    pair = [Turn("user", "Give the VQ indices.", ssft=True), Turn("assistant", "<vq start>1, 2<vq end>", ssft=True)]
    turns = TURNS[:2] + pair
    encoded = encode(build_template("vicuna_v1", tokenizer).render(turns), tokenizer)
    marked = [t for t, m in zip(encoded.input_ids, encoded.ssft_mask) if m]
    assert tokenizer.decode(marked) == " <vq start>1, 2<vq end></s>"
    assert all(encoded.labels[i] != IGNORE_INDEX for i, m in enumerate(encoded.ssft_mask) if m)


def test_the_tokenizers_own_chat_template_is_used(tokenizer):
    own = copy.deepcopy(tokenizer)
    own.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    template = build_template("chatml", own)
    assert template.from_tokenizer
    rendered = template.render(TURNS)
    assert rendered.text.startswith("<|im_start|>user\n")  # no built-in system turn
    assert supervised_runs(encode(rendered, own), own) == EXPECTED["chatml"]
    assert not build_template("llama3", own).from_tokenizer  # not of the llama3 family: built-in


def test_a_token_across_a_span_boundary_is_a_label_mismatch(tokenizer):
    # "image" tokenizes as "i" + "mage": a span ending after "im" cuts a token
    with pytest.raises(RecordRejected) as err:
        encode(Rendered("image", [(0, 2, False)]), tokenizer, "r9")
    assert err.value.reason == "label_mismatch" and "r9" in str(err.value)
    # whitespace is neutral: a span that starts at a space-prefixed token lines up
    encoded = encode(Rendered("a red", [(1, 5, False)]), tokenizer)
    assert tokenizer.decode([lab for lab in encoded.labels if lab != IGNORE_INDEX]) == " red"


def test_misaligned_records_are_counted_and_stop_the_run_past_the_threshold(tiny_cfg, tokenizer, tmp_path):
    # a chat template that glues turns together: an answer "im" followed by "age..." merges into "image"
    glued = copy.deepcopy(tokenizer)
    glued.chat_template = "<|im_start|>{% for m in messages %}{{ m['content'] }}{% endfor %}"
    good = {"id": "g{}", "conversations": [{"from": "human", "value": "Say hi. "}, {"from": "gpt", "value": "hi"}]}
    bad = {"id": "b{}", "conversations": [{"from": "human", "value": "q "}, {"from": "gpt", "value": "im"},
                                          {"from": "human", "value": "age?"}, {"from": "gpt", "value": " ok"}]}
    rows = [dict(good, id=f"g{i}") for i in range(8)] + [dict(bad, id=f"b{i}") for i in range(2)]
    (tmp_path / "t.json").write_text(json.dumps(rows))
    data = copy.deepcopy(tiny_cfg.train.stages[1].data)
    data.train, data.template, data.ssft.p_vq, data.ssft.p_px = str(tmp_path / "t.json"), "chatml", 0.0, 0.0
    data.reject_threshold = 0.25
    dataset = build_dataset(tiny_cfg, data, glued)
    assert dataset.stats.to_dict() == {"total": 10, "accepted": 8, "rejected": {"label_mismatch": 2}}
    assert len(dataset) == 8
    data.reject_threshold = 0.1
    with pytest.raises(TooManyRejected, match="label_mismatch"):
        build_dataset(tiny_cfg, data, glued)


# ------------------------------------------------------------------ LLaVA's image-first normalisation

QUESTION_FIRST = [Turn("user", "What is in the picture? <image>"), Turn("assistant", "A cat.")]


def test_vicuna_moves_the_image_to_the_front_as_llava_does(tokenizer):
    template = build_template("vicuna_v1", tokenizer)
    system = (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )
    assert template.render(QUESTION_FIRST).text == (
        f"<s>{system} USER: <image>\nWhat is in the picture? ASSISTANT: A cat.</s>"
    )
    # LLaVA-1.5 normalises every turn holding the image, also one that starts with it without a newline
    glued = [Turn("user", "<image>Describe it.  "), Turn("assistant", "A cat.")]
    assert template.render(glued).text == f"<s>{system} USER: <image>\nDescribe it. ASSISTANT: A cat.</s>"
    assert template.prompt(QUESTION_FIRST[:1]) == f"<s>{system} USER: <image>\nWhat is in the picture? ASSISTANT:"


def test_plain_renders_image_then_caption_whatever_the_question_order(tokenizer):
    template = build_template("plain", tokenizer)
    assert template.render(QUESTION_FIRST).text == "<s><image>A cat.\n"
    assert template.prompt(QUESTION_FIRST[:1]) == "<s><image>"


@pytest.mark.parametrize("name", ["llama3", "chatml"])
def test_jinja_templates_keep_the_image_first(name, tokenizer):
    template = build_template(name, tokenizer)
    text = template.render(QUESTION_FIRST).text
    assert "<image>\nWhat is in the picture?" in text and "picture? <image>" not in text
    # as LLaVA-NeXT: a turn already starting with the image is left as written
    assert "<image>Describe it." in template.render([Turn("user", "<image>Describe it."), Turn("assistant", "A.")]).text


def test_turns_with_several_images_keep_their_places(tokenizer):
    turns = [Turn("user", "Compare <image> and <image>."), Turn("assistant", "Same.")]
    assert "USER: Compare <image> and <image>. ASSISTANT:" in build_template("vicuna_v1", tokenizer).render(turns).text


def test_image_first_keeps_the_supervised_spans(tokenizer):
    encoded = encode(build_template("vicuna_v1", tokenizer).render(QUESTION_FIRST), tokenizer, "r")
    assert supervised_runs(encoded, tokenizer) == [" A cat.</s>"]
