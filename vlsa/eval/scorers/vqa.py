"""VQA soft accuracy: VQAv2, TextVQA and VizWiz, each as its reference pipeline scores it.

- ``vqav2``: the answer goes through LLaVA's submission processor and then the official evaluation's
  normalisation; the ten human answers get the official punctuation step when they disagree.
  Ground truth: the official annotations JSON (``v2_mscoco_val2014_annotations.json``:
  ``{"annotations": [{question_id, question_type, answer_type, answers: [{answer, ...}]}]}``).
- ``textvqa``: answer and human answers both through the processor LLaVA's TextVQA evaluation uses.
  Ground truth: the official TextVQA JSON (``TextVQA_0.5.1_val.json``: ``{"data": [{question_id,
  image_id, question, answers}]}``). Answers may carry the ``question_id`` or, as LLaVA's TextVQA
  question file does, the ``image_id`` with the question text in ``prompt``.
- ``vizwiz``: as ``vqav2`` but the human answers are compared as given (the VizWiz evaluation does
  not normalise them). Ground truth: the official VizWiz annotations (``val.json``: a list of
  ``{image, question, answers: [{answer, answer_confidence}], answer_type, answerable}``);
  ``question_id`` is the ``image`` file name or the 0-based position in that list (as LLaVA numbers it).
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
    qid,
    read_json,
)
from vlsa.eval.scorers._vqa_text import evalai_normalize, soft_accuracy, strip_punctuation, vqa_normalize


def _human_answers(item: dict, where: str) -> list[str]:
    answers = item.get("answers")
    if not isinstance(answers, list) or not answers:
        raise ScoreError(f"{where}: needs a non-empty 'answers' list, got {answers!r}")
    return [a["answer"] if isinstance(a, dict) else a for a in answers]


def _vqav2_questions(gt: dict) -> dict[str, dict]:
    if not isinstance(gt, dict) or not isinstance(gt.get("annotations"), list):
        raise ScoreError("vqav2: ground truth must be the annotations JSON, an object with an 'annotations' list")
    return {qid(a["question_id"]): a for a in gt["annotations"]}


@register("vqav2", read=read_json, gt_format="VQAv2 annotations JSON {'annotations': [...]}; question_id")
def score_vqav2(answers: list[dict], gt: dict, *, partial: bool = False) -> dict:
    """Soft accuracy overall, per answer type and per question type."""
    questions = _vqav2_questions(gt)
    matched = index_answers("vqav2", answers, by_question_id(questions))
    keys = check_coverage("vqav2", questions, matched, partial)
    scored = []
    for key in keys:
        humans = _human_answers(questions[key], f"vqav2 question {key}")
        if len(set(humans)) > 1:  # the official code only cleans human answers that disagree
            humans = [strip_punctuation(h) for h in humans]
        answer = vqa_normalize(evalai_normalize(matched[key]["text"]))
        scored.append((questions[key], soft_accuracy(answer, humans)))
    return {
        "accuracy": mean(s for _, s in scored),
        "per_answer_type": mean_by((q.get("answer_type", "other"), s) for q, s in scored),
        "per_question_type": mean_by((q.get("question_type", "unknown"), s) for q, s in scored),
        "n": len(scored),
    }


def _textvqa_resolver(items: dict[str, dict]):
    by_image: dict[str, list[str]] = {}
    for key, item in items.items():
        by_image.setdefault(qid(item.get("image_id")), []).append(key)

    def resolve(row: dict) -> str | None:
        key = qid(row["question_id"])
        if key in items:
            return key
        # LLaVA's TextVQA question file uses the image id; the prompt's question picks the entry.
        prompt = str(row.get("prompt", "")).lower()
        hits = [k for k in by_image.get(key, []) if items[k]["question"].lower() in prompt]
        return hits[0] if len(hits) == 1 else None

    return resolve


@register("textvqa", read=read_json, gt_format="TextVQA JSON {'data': [...]}; question_id, or image_id + prompt")
def score_textvqa(answers: list[dict], gt: dict, *, partial: bool = False) -> dict:
    """Soft accuracy with the TextVQA processor on both sides."""
    if not isinstance(gt, dict) or not isinstance(gt.get("data"), list):
        raise ScoreError("textvqa: ground truth must be the TextVQA JSON, an object with a 'data' list")
    items = {qid(d["question_id"]): d for d in gt["data"]}
    matched = index_answers("textvqa", answers, _textvqa_resolver(items))
    keys = check_coverage("textvqa", items, matched, partial)
    scores = []
    for key in keys:
        humans = [evalai_normalize(h) for h in _human_answers(items[key], f"textvqa question {key}")]
        scores.append(soft_accuracy(evalai_normalize(matched[key]["text"]), humans))
    return {"accuracy": mean(scores), "n": len(scores)}


@register("vizwiz", read=read_json, gt_format="VizWiz annotations JSON [{image, answers, ...}]; image name or index")
def score_vizwiz(answers: list[dict], gt: list, *, partial: bool = False) -> dict:
    """Soft accuracy overall and per answer type (other, yes/no, number, unanswerable)."""
    if not isinstance(gt, list):
        raise ScoreError(f"vizwiz: ground truth must be the VizWiz annotations list, got a JSON {type(gt).__name__}")
    items = {item["image"]: item for item in gt}
    by_position = {str(i): item["image"] for i, item in enumerate(gt)}

    def resolve(row: dict) -> str | None:
        key = qid(row["question_id"])
        return key if key in items else by_position.get(key)

    matched = index_answers("vizwiz", answers, resolve)
    keys = check_coverage("vizwiz", items, matched, partial)
    scored = []
    for key in keys:
        humans = _human_answers(items[key], f"vizwiz image {key}")
        scored.append((items[key], soft_accuracy(vqa_normalize(evalai_normalize(matched[key]["text"])), humans)))
    return {
        "accuracy": mean(s for _, s in scored),
        "per_answer_type": mean_by((item.get("answer_type", "other"), s) for item, s in scored),
        "n": len(scored),
    }
