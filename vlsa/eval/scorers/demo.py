"""The project's generated held-out split: exact match after a light normalisation.

Answer and ground truth are lowercased, punctuation becomes spaces (a decimal point between digits
stays), the articles a/an/the are dropped and whitespace is collapsed; they must then be equal.
Ground truth: JSON lines of ``{question_id, answer[, question_type | category]}`` (the demo's
held-out file uses the LLaVA question format's ``category``). Accuracy is given overall and per type.
"""

from __future__ import annotations

import re
import string

from vlsa.eval.scorers import register
from vlsa.eval.scorers._common import (
    ScoreError,
    by_question_id,
    check_coverage,
    index_answers,
    mean,
    mean_by,
    qid,
    read_jsonl,
)

_PUNCT = re.compile(rf"(?!(?<=\d)\.(?=\d))[{re.escape(string.punctuation)}]")
_ARTICLES = frozenset({"a", "an", "the"})


def demo_normalize(text: str) -> str:
    """``"The Red circle."`` -> ``"red circle"``; ``"3.5"`` stays ``"3.5"``."""
    words = _PUNCT.sub(" ", str(text).lower()).split()
    return " ".join(word for word in words if word not in _ARTICLES)


def _questions(gt: list[dict]) -> dict[str, dict]:
    questions: dict[str, dict] = {}
    for line, row in enumerate(gt, start=1):
        if "question_id" not in row or "answer" not in row:
            raise ScoreError(f"demo: ground-truth line {line} needs 'question_id' and 'answer', has {sorted(row)}")
        key = qid(row["question_id"])
        if key in questions:
            raise ScoreError(f"demo: ground-truth line {line} repeats question_id {key!r}")
        questions[key] = row
    return questions


def _question_type(row: dict) -> str:
    return str(row.get("question_type") or row.get("category") or "all")


@register("demo", read=read_jsonl, gt_format="JSONL {question_id, answer[, question_type | category]}")
def score_demo(answers: list[dict], gt: list[dict], *, partial: bool = False) -> dict:
    """Accuracy overall and per question type."""
    questions = _questions(gt)
    matched = index_answers("demo", answers, by_question_id(questions))
    keys = check_coverage("demo", questions, matched, partial)
    scored = [
        (_question_type(questions[k]),
         float(demo_normalize(matched[k]["text"]) == demo_normalize(questions[k]["answer"])))
        for k in keys
    ]  # fmt: skip
    return {"accuracy": mean(s for _, s in scored), "per_type": mean_by(scored), "n": len(scored)}
