"""GQA exact match, as LLaVA's conversion plus the official GQA evaluation compute it.

The answer loses trailing periods and is lowercased (LLaVA's ``convert_gqa_for_eval``), then must
equal the question's ``answer`` exactly. As in the official script, only questions marked
``isBalanced`` count (a question without that field counts too), ``binary`` / ``open`` split on
the structural type (``query`` is open), and accuracy is also given per structural and semantic type.
Ground truth: the official questions JSON (``testdev_balanced_questions.json``: ``{question_id:
{answer, isBalanced, types: {structural, semantic, ...}, ...}}``).
"""

from __future__ import annotations

from vlsa.eval.scorers import register
from vlsa.eval.scorers._common import (
    ScoreError,
    by_question_id,
    check_coverage,
    index_answers,
    mean,
    mean_by,
    read_json,
)


def gqa_answer(text: str) -> str:
    """LLaVA's GQA answer clean-up: trailing periods off, lowercase."""
    return text.rstrip(".").lower()


@register("gqa", read=read_json, gt_format="GQA questions JSON {question_id: {answer, isBalanced, types}}")
def score_gqa(answers: list[dict], gt: dict, *, partial: bool = False) -> dict:
    """Accuracy over balanced questions, binary/open, per structural and semantic type."""
    if not isinstance(gt, dict):
        raise ScoreError(f"gqa: ground truth must be the questions JSON object, got a JSON {type(gt).__name__}")
    questions = {str(key): value for key, value in gt.items()}
    matched = index_answers("gqa", answers, by_question_id(questions))
    keys = check_coverage("gqa", questions, matched, partial)
    scored = []
    for key in keys:
        question = questions[key]
        if question.get("isBalanced", True):
            correct = float(gqa_answer(matched[key]["text"]) == question["answer"])
            scored.append((question.get("types", {}), correct))
    if not scored:
        raise ScoreError(f"gqa: none of the {len(keys)} answered questions is balanced ('isBalanced': true)")
    metrics = {"accuracy": mean(s for _, s in scored), "n": len(scored)}
    structural = [(types["structural"], s) for types, s in scored if types.get("structural")]
    if structural:
        metrics["binary"] = mean(s for kind, s in structural if kind != "query")
        metrics["open"] = mean(s for kind, s in structural if kind == "query")
        metrics["per_structural_type"] = mean_by(structural)
    semantic = [(types["semantic"], s) for types, s in scored if types.get("semantic")]
    if semantic:
        metrics["per_semantic_type"] = mean_by(semantic)
    return metrics
