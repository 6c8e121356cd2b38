"""The option letter in a free-form multiple-choice answer (ScienceQA, MMBench, SEED-Bench, AI2D).

The rules are those of the LLaVA evaluation scripts, tried in order, widened only where they
would miss an unambiguous letter (a letter in parentheses, ``Answer: B``):

1. the whole answer is one letter, optionally in brackets or followed by a period: ``B``, ``b.``, ``(B)``;
2. the answer starts with a letter and a delimiter: ``B. a cat``, ``B) a cat``, ``(B) a cat``, ``B: a cat``;
3. it says "answer is X" / "answer: X" (any case), with X upper case, in parentheses, or a lower-case
   letter followed by a period: ``The answer is (B).``; two different letters that way -> no answer;
4. with the option texts known (MMBench's rule): the answer is part of exactly one option's text.

A letter outside the question's options counts as no answer, which scores as wrong.
"""

from __future__ import annotations

import re
import string
from typing import Sequence

LETTERS = string.ascii_uppercase
_BARE = re.compile(r"[(\[]?([A-Za-z])[)\]]?\.?")
_LEADING = re.compile(r"\(?([A-Z])[.):](?:\s|$)")
_ANSWER_IS = re.compile(
    r"(?i:\banswer\s*(?:is\b\s*:?|:))\s*(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z0-9])|([a-z])\.(?=\s|$))"
)


def extract_choice(text: str, n_options: int, options: Sequence[str] | None = None) -> str | None:
    """The option letter (``"A"``...) that ``text`` picks among ``n_options``, or None when none is clear."""
    valid = LETTERS[:n_options]
    letter = _rule_letter(text.strip())
    if letter is None and options is not None:
        letter = _option_text_match(text, options)
    return letter if letter is not None and letter in valid else None


def _rule_letter(text: str) -> str | None:
    bare = _BARE.fullmatch(text)
    if bare:
        return bare.group(1).upper()
    leading = _LEADING.match(text)
    if leading:
        return leading.group(1)
    found = {"".join(m.groups(default="")).upper() for m in _ANSWER_IS.finditer(text)}
    return found.pop() if len(found) == 1 else None


def _option_text_match(text: str, options: Sequence[str]) -> str | None:
    answer = text.strip().rstrip(".").strip().lower()
    if not answer:
        return None
    hits = [LETTERS[i] for i, option in enumerate(options) if answer in str(option).lower()]
    return hits[0] if len(hits) == 1 else None
