"""SEED-Bench: the option letter (LLaVA rules, see ``_choice``) against the question's ``answer``.

Accuracy is given overall, per question type (named through the file's ``question_type`` table) and
per ``data_type`` (``accuracy_image`` is the SEED-Bench-image number LLaVA reports).
Ground truth: the official SEED-Bench JSON (``SEED-Bench.json``: ``{"question_type": {name: id},
"questions": [{question_id, answer, choice_a..choice_d, question_type_id, data_type}]}``);
``question_id`` is the question's id.
"""

from __future__ import annotations

from vlsa.eval.scorers import register
from vlsa.eval.scorers._choice import LETTERS, extract_choice
from vlsa.eval.scorers._common import (
    ScoreError,
    by_question_id,
    check_coverage,
    index_answers,
    mean,
    mean_by,
    qid,
    read_json,
)


def _n_choices(question: dict) -> int:
    return sum(1 for letter in LETTERS if f"choice_{letter.lower()}" in question)


@register("seed", read=read_json, gt_format="SEED-Bench JSON {'questions': [...], 'question_type': {...}}; question_id")
def score_seed(answers: list[dict], gt: dict, *, partial: bool = False) -> dict:
    """Accuracy overall, per question type and per data type."""
    if not isinstance(gt, dict) or not isinstance(gt.get("questions"), list):
        raise ScoreError("seed: ground truth must be the SEED-Bench JSON, an object with a 'questions' list")
    questions = {qid(q["question_id"]): q for q in gt["questions"]}
    type_names = {str(i): name for name, i in gt.get("question_type", {}).items()}
    matched = index_answers("seed", answers, by_question_id(questions))
    keys = check_coverage("seed", questions, matched, partial)
    scored = []
    for key in keys:
        question = questions[key]
        letter = extract_choice(matched[key]["text"], _n_choices(question))
        scored.append((question, float(letter is not None and letter == str(question["answer"]).strip())))
    metrics = {"accuracy": mean(s for _, s in scored), "n": len(scored)}
    for data_type, value in mean_by((q["data_type"], s) for q, s in scored if "data_type" in q).items():
        metrics[f"accuracy_{data_type}"] = value
    type_of = [(type_names.get(str(q.get("question_type_id")), q.get("question_type_id")), s) for q, s in scored]
    metrics["per_question_type"] = mean_by(type_of)
    return metrics
