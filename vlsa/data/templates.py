"""Chat templates and label masking.

A template renders a conversation to one string and records the character spans the model is
trained on (assistant answers and their end-of-turn marker). The whole string is then tokenized once
and each token is labelled from its character offsets, so the labels always describe exactly the
tokens the model sees. A token that mixes supervised and unsupervised text, or a supervised character
no token covers, means the labels would not line up with the text: the record is rejected with
``label_mismatch`` instead of being trained on shifted labels (LLaVA's silent "tokenization mismatch").

``plain`` (Stage I captions) and ``vicuna_v1`` (LLaVA-1.5) are LLaVA's formats; ``llama3`` and
``chatml`` (Qwen2, LLaVA-NeXT) use the tokenizer's own Jinja chat template when it is of that family,
else an equivalent built-in one.

Before rendering, a turn's single image placeholder is moved to the front (``<image>\n`` + the rest,
``image_first``), as LLaVA does, so a record whose image follows its question renders as it did for
the LLaVA checkpoints users start from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlsa.io.records import ASSISTANT, USER, RecordRejected, Turn
from vlsa.tokens import IGNORE_INDEX, IMAGE_TOKEN

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)
_LLAMA3_JINJA = (
    "{{ bos_token }}{% if messages[0]['role'] != 'system' %}<|start_header_id|>system<|end_header_id|>\n\n"
    + LLAMA3_SYSTEM
    + "<|eot_id|>{% endif %}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_CHATML_JINJA = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# family -> (marker that identifies a tokenizer's template of this family, built-in template, end of turn)
_JINJA = {
    "llama3": ("<|start_header_id|>", _LLAMA3_JINJA, "<|eot_id|>"),
    "chatml": ("<|im_start|>", _CHATML_JINJA, "<|im_end|>"),
}


@dataclass
class Rendered:
    """A rendered conversation and its supervised character spans ``(start, end, is_ssft)``."""

    text: str
    spans: list[tuple[int, int, bool]] = field(default_factory=list)

    def supervised_text(self) -> list[str]:
        return [self.text[s:e] for s, e, _ in self.spans]


@dataclass
class Encoded:
    """Token ids with their labels (-100: not supervised) and the SSFT-answer mask."""

    input_ids: list[int]
    labels: list[int]
    ssft_mask: list[bool]


def image_first(turns: list[Turn], always: bool = True) -> list[Turn]:
    """Turns with a single ``<image>`` moved to the front as ``<image>\n`` + the stripped rest.

    ``always`` is LLaVA-1.5's rule (every turn holding the placeholder, so ``<image>Q`` becomes
    ``<image>\nQ`` too); otherwise LLaVA-NeXT's (only a turn that does not already start with it).
    A turn with several placeholders keeps their places: both codebases leave interleaved images be.
    """
    out = []
    for turn in turns:
        content = turn.content
        if content.count(IMAGE_TOKEN) == 1 and (always or not content.startswith(IMAGE_TOKEN)):
            content = f"{IMAGE_TOKEN}\n{content.replace(IMAGE_TOKEN, '').strip()}".strip()
        out.append(turn if content == turn.content else Turn(turn.role, content, turn.ssft))
    return out


class ChatTemplate:
    """Renders conversations (training) and prompts (generation) in one chat format."""

    name = ""
    stop = ""
    """The string that ends an assistant turn (generation stops there)."""

    def render(self, turns: list[Turn]) -> Rendered:
        """The full conversation with its supervised spans."""
        raise NotImplementedError

    def prompt(self, turns: list[Turn]) -> str:
        """A conversation ending in a user turn, followed by the start of the assistant's answer."""
        raise NotImplementedError


class PlainTemplate(ChatTemplate):
    """LLaVA ``plain`` (Stage I): the image placeholders then the caption; the instruction is dropped."""

    name, stop = "plain", "\n"

    def __init__(self, tokenizer):
        self.bos = tokenizer.bos_token or ""

    def _user(self, turn: Turn) -> str:
        count = turn.content.count(IMAGE_TOKEN)
        return IMAGE_TOKEN * count if count else turn.content + "\n"

    def render(self, turns: list[Turn]) -> Rendered:
        out = Rendered(self.bos)
        for turn in image_first(turns):
            if turn.role == USER:
                out.text += self._user(turn)
            else:
                start = len(out.text)
                out.text += turn.content + "\n"
                out.spans.append((start, len(out.text), turn.ssft))
        return out

    def prompt(self, turns: list[Turn]) -> str:
        _check_prompt(turns)
        return self.render(turns[:-1]).text + self._user(image_first(turns[-1:])[0])


class VicunaTemplate(ChatTemplate):
    """LLaVA ``vicuna_v1``: ``SYSTEM USER: q ASSISTANT: a</s>USER: ...``; supervised: `` a</s>``."""

    name = "vicuna_v1"

    def __init__(self, tokenizer):
        self.bos = tokenizer.bos_token or ""
        self.stop = tokenizer.eos_token or "</s>"

    def render(self, turns: list[Turn]) -> Rendered:
        out = Rendered(f"{self.bos}{VICUNA_SYSTEM} ")
        for turn in image_first(turns):
            if turn.role == USER:
                out.text += f"USER: {turn.content} ASSISTANT:"
            else:
                # the space before the answer is part of the answer: the prompt ends at "ASSISTANT:"
                start = len(out.text)
                out.text += f" {turn.content}{self.stop}"
                out.spans.append((start, len(out.text), turn.ssft))
        return out

    def prompt(self, turns: list[Turn]) -> str:
        _check_prompt(turns)
        return self.render(turns).text


class JinjaTemplate(ChatTemplate):
    """A Jinja chat template; assistant spans found by rendering growing prefixes of the conversation."""

    def __init__(self, tokenizer, name: str):
        marker, builtin, stop = _JINJA[name]
        own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
        self.name, self.stop, self.tokenizer = name, stop, tokenizer
        self.source = own if marker in own else builtin
        self.from_tokenizer = self.source is own

    def _apply(self, turns: list[Turn], generation: bool) -> str:
        messages = [{"role": t.role, "content": t.content} for t in image_first(turns, always=False)]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.source, tokenize=False, add_generation_prompt=generation
        )

    def render(self, turns: list[Turn]) -> Rendered:
        text = self._apply(turns, False)
        out = Rendered(text)
        for k, turn in enumerate(turns):
            if turn.role != ASSISTANT:
                continue
            before, upto = self._apply(turns[:k], True), self._apply(turns[: k + 1], False)
            if not (text.startswith(upto) and upto.startswith(before)):
                raise RecordRejected("template_not_incremental", f"template {self.name}: turn {k} is not a prefix")
            out.spans.append((len(before), len(upto), turn.ssft))
        return out

    def prompt(self, turns: list[Turn]) -> str:
        _check_prompt(turns)
        return self._apply(turns, True)


# The content of a message given as a string or as transformers' list of parts: the images first, as image_first
# puts them, then the text.
_CONTENT_MACRO = (
    "{%- macro content(m) -%}{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
    "{%- for c in m['content'] if c['type'] == 'image' -%}{{ '" + IMAGE_TOKEN + "\\n' }}{%- endfor -%}"
    "{%- for c in m['content'] if c['type'] == 'text' -%}{{ c['text'] }}{%- endfor -%}{%- endif -%}{%- endmacro -%}"
)


def jinja_template(name: str, tokenizer) -> str:
    """A Jinja chat template rendering prompts as the template ``name`` does (``apply_chat_template`` with
    ``add_generation_prompt=True``), for exported processors; message contents may be strings or lists of parts."""
    if name == "vicuna_v1":
        return (_CONTENT_MACRO + "{{ bos_token }}" + VICUNA_SYSTEM + " {% for m in messages %}"
                "{% if m['role'] == 'user' %}USER: {{ content(m) }} ASSISTANT:"
                "{% else %} {{ content(m) }}{{ eos_token }}"
                "{% endif %}{% endfor %}")
    if name == "plain":
        return (_CONTENT_MACRO + "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                "{% set c = content(m) %}{% if '" + IMAGE_TOKEN + "' in c %}"
                "{{ '" + IMAGE_TOKEN + "' * (c.split('" + IMAGE_TOKEN + "') | length - 1) }}"
                "{% else %}{{ c }}\n{% endif %}"
                "{% else %}{{ content(m) }}\n{% endif %}{% endfor %}")
    source = JinjaTemplate(tokenizer, name).source
    source = source.replace("m['content']", "content(m)").replace("message['content']", "content(message)")
    return _CONTENT_MACRO + source


def _check_prompt(turns: list[Turn]) -> None:
    if not turns or turns[-1].role != USER:
        raise ValueError(f"a prompt must end with a user turn, got roles {[t.role for t in turns]}")


def build_template(name: str, tokenizer) -> ChatTemplate:
    """The chat template ``name`` (plain, vicuna_v1, llama3, chatml) for this tokenizer."""
    if name == "plain":
        return PlainTemplate(tokenizer)
    if name == "vicuna_v1":
        return VicunaTemplate(tokenizer)
    if name in _JINJA:
        return JinjaTemplate(tokenizer, name)
    raise ValueError(f"unknown chat template {name!r}; known: plain, vicuna_v1, {', '.join(_JINJA)}")


# ------------------------------------------------------------------------------------ label masking


def encode(rendered: Rendered, tokenizer, record_id: str = "?") -> Encoded:
    """Tokenize the rendered text once and label each token from its character offsets.

    Whitespace is neutral (a token may carry a space across a span boundary); any other character
    mixed across a boundary, or left uncovered, raises ``RecordRejected("label_mismatch")``.
    """
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    return label(rendered, enc["input_ids"], enc["offset_mapping"], record_id)


def label(rendered: Rendered, ids: list[int], offsets, record_id: str = "?") -> Encoded:
    """Labels of already tokenized text (``offsets``: (start, end) characters of each token)."""
    text, ids = rendered.text, list(ids)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    span_of = np.full(len(text) + 1, -1, dtype=np.int64)  # span index of each character (one spare slot)
    for i, (start, end, _) in enumerate(rendered.spans):
        span_of[start:end] = i
    token_span = _token_spans(text, span_of, offsets, record_id)  # (n,) span index or -1
    _check_covered(text, span_of, offsets, token_span, record_id)
    is_ssft = np.array([flag for _, _, flag in rendered.spans] + [False], dtype=bool)  # index -1: none
    labels = np.where(token_span >= 0, np.asarray(ids, dtype=np.int64), IGNORE_INDEX)
    return Encoded(ids, labels.tolist(), is_ssft[token_span].tolist())


def _token_spans(text: str, span_of: np.ndarray, offsets: np.ndarray, rid: str) -> np.ndarray:
    """Span index of each token (-1: none), from the first and last non-space characters it covers.

    Spans are contiguous, so a token whose first and last content characters lie in the same span
    lies wholly in it; one that has content both inside and outside spans is a mismatch.
    """
    n = len(text)
    content = np.array([not c.isspace() for c in text] + [False], dtype=bool)
    inside = content & (span_of >= 0)
    cum_content = np.concatenate([[0], np.cumsum(content)])  # (n+2,)
    cum_inside = np.concatenate([[0], np.cumsum(inside)])
    positions = np.arange(n + 1)
    next_content = np.minimum.accumulate(np.where(content, positions, n)[::-1])[::-1]  # first content char >= i
    prev_content = np.maximum.accumulate(np.where(content, positions, -1))  # last content char <= i
    s, e = offsets[:, 0], offsets[:, 1]
    empty = e <= s
    s, e = np.where(empty, 0, s), np.where(empty, 1, e)
    n_content, n_inside = cum_content[e] - cum_content[s], cum_inside[e] - cum_inside[s]
    first, last = span_of[next_content[s]], span_of[prev_content[e - 1]]
    spaces = np.where((span_of[s] == span_of[e - 1]), span_of[s], -1)  # whitespace-only: inside one span or not
    out = np.where(n_content == 0, spaces, np.where(n_inside == 0, -1, first))
    bad = ~empty & (n_inside > 0) & ((n_inside != n_content) | (first != last))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise RecordRejected(
            "label_mismatch",
            f"record {rid}: token {text[s[k]:e[k]]!r} at chars {s[k]}-{e[k]} crosses a supervised span boundary",
        )
    return np.where(empty, -1, out)


def _check_covered(text: str, span_of: np.ndarray, offsets: np.ndarray, token_span: np.ndarray, rid: str) -> None:
    """Every non-space supervised character must belong to a supervised token."""
    delta = np.zeros(len(text) + 1, dtype=np.int64)
    supervised = offsets[token_span >= 0]
    np.add.at(delta, supervised[:, 0], 1)
    np.add.at(delta, supervised[:, 1], -1)
    covered = np.cumsum(delta)[: len(text)] > 0
    content = np.array([not c.isspace() for c in text], dtype=bool)
    missed = np.flatnonzero((span_of[: len(text)] >= 0) & content & ~covered)
    if missed.size:
        raise RecordRejected(
            "label_mismatch", f"record {rid}: supervised text at char {missed[0]} has no supervised token"
        )
