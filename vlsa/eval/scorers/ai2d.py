"""AI2D: the option letter (LLaVA rules, see ``_choice``) against ``correctAnswer``.

Ground truth: the official AI2D question annotations, one JSON per diagram (``ai2d/questions/
<image>.json``: ``{"imageName", "questions": {text: {answerTexts, correctAnswer, questionId,
abcLabel}}}``): the ``questions`` folder, one such file, or a JSON list of them. ``question_id``
is the ``questionId`` (``"0.png-0"``); score a split (e.g. the common test subset) with ``--partial``.
"""

from __future__ import annotations

from vlsa.eval.scorers import register
from vlsa.eval.scorers._choice import LETTERS, extract_choice
from vlsa.eval.scorers._common import (
    ScoreError,
    by_question_id,
    check_coverage,
    files_below,
    index_answers,
    mean,
    read_json,
)


def read_ai2d(path: str) -> list[dict]:
    """The diagram documents of one file, a JSON list, or every ``.json`` below a folder."""
    if str(path).endswith(".json"):
        doc = read_json(path)
        return doc if isinstance(doc, list) else [doc]
    return [read_json(p) for p, rel in files_below(path) if rel.suffix == ".json"]


def ai2d_questions(docs: list[dict]) -> dict[str, dict]:
    """questionId -> {answerTexts, correctAnswer, ...} over all diagrams."""
    questions: dict[str, dict] = {}
    for doc in docs:
        if not isinstance(doc, dict) or not isinstance(doc.get("questions"), dict):
            raise ScoreError(
                f"ai2d: each diagram file needs a 'questions' object (give the ai2d/questions folder); "
                f"got {str(doc)[:80]!r}"
            )
        for text, question in doc["questions"].items():
            key = str(question["questionId"])
            if key in questions:
                raise ScoreError(f"ai2d: questionId {key!r} appears twice (second time for {text!r})")
            questions[key] = question
    return questions


@register("ai2d", read=read_ai2d, gt_format="AI2D questions folder (or file) of {imageName, questions}; questionId")
def score_ai2d(answers: list[dict], gt: list[dict], *, partial: bool = False) -> dict:
    """Accuracy."""
    questions = ai2d_questions(gt)
    matched = index_answers("ai2d", answers, by_question_id(questions))
    keys = check_coverage("ai2d", questions, matched, partial)
    scores = []
    for key in keys:
        question = questions[key]
        letter = extract_choice(matched[key]["text"], len(question["answerTexts"]))
        scores.append(float(letter is not None and LETTERS.index(letter) == int(question["correctAnswer"])))
    return {"accuracy": mean(scores), "n": len(scores)}
