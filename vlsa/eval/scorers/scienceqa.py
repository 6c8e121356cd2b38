"""ScienceQA (``scienceqa``: the whole split; ``scienceqa_img``: its questions with an image).

The option letter is read with the LLaVA rules (see ``_choice``); an unreadable answer or a letter
beyond the question's choices is wrong. ``img_accuracy`` counts the problems whose ``image`` field
is set (LLaVA's ScienceQA-IMG number; LLaVA tells them apart by an ``<image>`` in the prompt).
Ground truth: the official ``problems.json`` (``{pid: {choices, answer (index), image, split}}``),
or the folder holding it; a ``pid_splits.json`` beside it defines the splits, else each problem's
``split`` field does. Option ``split`` (default ``test``). ``question_id`` is the problem id.
"""

from __future__ import annotations

import posixpath
from typing import NamedTuple

from vlsa.eval.scorers import register
from vlsa.eval.scorers._choice import LETTERS, extract_choice
from vlsa.eval.scorers._common import (
    ScoreError,
    by_question_id,
    check_coverage,
    index_answers,
    mean,
    qid,
    read_json,
)
from vlsa.io import storage


class ScienceQA(NamedTuple):
    problems: dict[str, dict]
    splits: dict[str, list[str]] | None
    """``pid_splits.json`` when it sits beside ``problems.json``."""


def read_scienceqa(path: str) -> ScienceQA:
    """``problems.json`` (or its folder) and the neighbouring ``pid_splits.json`` when present."""
    path = str(path).rstrip("/")
    if not path.endswith(".json"):
        path = f"{path}/problems.json"
    splits_path = posixpath.join(posixpath.dirname(path), "pid_splits.json")
    splits = read_json(splits_path) if storage.exists(splits_path) else None
    return ScienceQA(problems=read_json(path), splits=splits)


def _split_problems(gt: ScienceQA | dict, split: str) -> dict[str, dict]:
    data = gt if isinstance(gt, ScienceQA) else ScienceQA(problems=gt, splits=None)
    if not isinstance(data.problems, dict):
        raise ScoreError(
            f"scienceqa: problems.json must be an object keyed by problem id, got a {type(data.problems).__name__}"
        )
    if data.splits is not None:
        if split not in data.splits:
            raise ScoreError(f"scienceqa: pid_splits.json has no split {split!r}; it has {sorted(data.splits)}")
        return {str(pid): data.problems[str(pid)] for pid in data.splits[split]}
    chosen = {str(pid): p for pid, p in data.problems.items() if p.get("split") == split}
    if not chosen:
        raise ScoreError(f"scienceqa: no problem has split {split!r}")
    return chosen


def _correct(problem: dict, text: str) -> float:
    letter = extract_choice(text, len(problem["choices"]))
    return float(letter is not None and LETTERS.index(letter) == int(problem["answer"]))


def _score(name: str, answers: list[dict], problems: dict[str, dict], partial: bool) -> list[tuple[dict, float]]:
    matched = index_answers(name, answers, by_question_id(problems))
    keys = check_coverage(name, problems, matched, partial)
    return [(problems[k], _correct(problems[k], matched[k]["text"])) for k in keys]


@register("scienceqa", read=read_scienceqa, gt_format="ScienceQA problems.json (+ pid_splits.json); problem id")
def score_scienceqa(answers: list[dict], gt: ScienceQA | dict, *, partial: bool = False, split: str = "test") -> dict:
    """Accuracy over the split and over its questions with an image."""
    scored = _score("scienceqa", answers, _split_problems(gt, split), partial)
    with_image = [s for problem, s in scored if problem.get("image")]
    return {
        "accuracy": mean(s for _, s in scored),
        "img_accuracy": mean(with_image),
        "n": len(scored),
        "n_img": len(with_image),
    }


@register("scienceqa_img", read=read_scienceqa, gt_format="ScienceQA problems.json (+ pid_splits.json); problem id")
def score_scienceqa_img(
    answers: list[dict], gt: ScienceQA | dict, *, partial: bool = False, split: str = "test"
) -> dict:
    """Accuracy over the split's questions that have an image (ScienceQA-IMG).

    Answers to the split's text-only questions are skipped, so the answer file of the whole split
    scores as is; answers to questions outside the split are still errors.
    """
    in_split = _split_problems(gt, split)
    problems = {pid: p for pid, p in in_split.items() if p.get("image")}
    if not problems:
        raise ScoreError(f"scienceqa_img: no problem of split {split!r} has an image")
    answers = [a for a in answers if qid(a["question_id"]) in problems or qid(a["question_id"]) not in in_split]
    scored = _score("scienceqa_img", answers, problems, partial)
    return {"accuracy": mean(s for _, s in scored), "n": len(scored)}
