"""POPE: accuracy, precision, recall, F1 and yes-ratio, with LLaVA's reading of yes/no answers.

An answer is cut at its first period, loses its commas and is split on spaces; it means "no" when
one of the words is exactly ``No``, ``no`` or ``not``, and "yes" otherwise (so "Not sure" is a
yes, as in the reference). "yes" is the positive class; a label other than ``no`` counts as yes.
Ground truth: a POPE label file, JSON lines of ``{question_id, label}`` (``coco_pope_random.json``
and its siblings); with a ``category`` field per line, metrics are also given per category, with
``mean_f1`` and ``mean_accuracy`` over the categories as papers report POPE.
"""

from __future__ import annotations

from vlsa.eval.scorers import register
from vlsa.eval.scorers._common import ScoreError, by_question_id, check_coverage, index_answers, qid, read_jsonl

_NO_WORDS = frozenset({"No", "no", "not"})


def pope_says_yes(text: str) -> bool:
    """LLaVA's POPE parsing: only the first sentence counts, and any no-word makes it a no."""
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return not _NO_WORDS.intersection(words)


def binary_metrics(pairs: list[tuple[bool, bool]]) -> dict:
    """(predicted yes, label yes) pairs -> confusion counts and rates; a 0/0 rate is reported as 0."""
    tp = sum(p and g for p, g in pairs)
    fp = sum(p and not g for p, g in pairs)
    tn = sum(not p and not g for p, g in pairs)
    fn = sum(not p and g for p, g in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / len(pairs),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "n": len(pairs),
    }  # fmt: skip


def _labels(gt: list[dict]) -> dict[str, dict]:
    labels: dict[str, dict] = {}
    for line, row in enumerate(gt, start=1):
        if "question_id" not in row or "label" not in row:
            raise ScoreError(f"pope: ground-truth line {line} needs 'question_id' and 'label', has {sorted(row)}")
        key = qid(row["question_id"])
        if key in labels:
            raise ScoreError(
                f"pope: ground-truth line {line} repeats question_id {key!r}; score each coco_pope_<category> "
                "file on its own, or give the merged file ids unique across categories"
            )
        labels[key] = row
    return labels


@register("pope", read=read_jsonl, gt_format="POPE label JSONL {question_id, label[, category]}")
def score_pope(answers: list[dict], gt: list[dict], *, partial: bool = False) -> dict:
    """Binary metrics over all answers, and per category when the labels carry one."""
    labels = _labels(gt)
    matched = index_answers("pope", answers, by_question_id(labels))
    keys = check_coverage("pope", labels, matched, partial)
    pairs = {key: (pope_says_yes(matched[key]["text"]), str(labels[key]["label"]) != "no") for key in keys}
    metrics = binary_metrics(list(pairs.values()))
    categories = sorted({str(labels[key]["category"]) for key in keys if "category" in labels[key]})
    if categories:
        per = {c: binary_metrics([pairs[k] for k in keys if str(labels[k].get("category")) == c]) for c in categories}
        metrics["per_category"] = per
        metrics["mean_f1"] = sum(m["f1"] for m in per.values()) / len(per)
        metrics["mean_accuracy"] = sum(m["accuracy"] for m in per.values()) / len(per)
    return metrics
