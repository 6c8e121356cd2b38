"""MME: acc and acc+ per subtask, and the perception / cognition totals of the official calculation.

An answer is lowercased; it is "yes" or "no" when it is exactly that, else "yes" when its first four
characters contain "yes", else "no" when they contain "no", else "other" (always wrong). Per subtask,
``acc`` is the fraction of questions answered right, ``acc_plus`` the fraction of images whose
questions are all right, and ``score`` = 100 * (acc + acc_plus), the official per-subtask points.
``perception`` and ``cognition`` sum those points over the subtasks of each group (out of 2000 and
800 with every subtask present): they are the official totals, not fractions.

Ground truth, either layout of the official data (a folder):

- ``MME_Benchmark_release_version/``: ``<subtask>/<image>.txt`` or
  ``<subtask>/questions_answers_YN/<image>.txt``, lines ``question<TAB>Yes|No``;
- the evaluation tool's per-subtask files ``<subtask>.txt``, lines
  ``image<TAB>question<TAB>Yes|No[<TAB>anything]``.

Answers follow LLaVA's MME question file: ``question_id`` = ``<subtask>/<image file>`` and
``prompt`` = the question (the "Answer the question using a single word or phrase." suffix that
LLaVA adds, the "Please answer yes or no." suffix and an ``<image>`` token are ignored when matching).
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from typing import NamedTuple

from vlsa.eval.scorers import register
from vlsa.eval.scorers._common import ScoreError, check_coverage, files_below, index_answers, mean, read_text

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_PROMPT_NOISE = ("<image>", "Answer the question using a single word or phrase.", "Please answer yes or no.")


class MMEKey(NamedTuple):
    subtask: str
    image: str
    """Image file name without its extension."""
    question: str
    """The question with prompt boilerplate removed and whitespace collapsed."""


def question_core(text: str) -> str:
    """The question as matched between ground truth and answers."""
    for noise in _PROMPT_NOISE:
        text = text.replace(noise, " ")
    return " ".join(text.split())


def mme_label(text: str) -> str:
    """The official reading of an answer: ``yes``, ``no`` or ``other``."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def _gt_lines(path: str, rel) -> list[tuple[MMEKey, str]]:
    parts = rel.parts
    rows = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(parts) == 1 and len(fields) >= 3:  # evaluation-tool file: image, question, answer
            subtask, image, question, answer = rel.stem, fields[0], fields[1], fields[2]
        elif len(parts) > 1 and len(fields) == 2:  # release folder: one file per image
            subtask, image, question, answer = parts[0], rel.stem, fields[0], fields[1]
        else:
            raise ScoreError(f"mme: {path} line {lineno} has {len(fields)} tab-separated fields; see the MME formats")
        if answer.strip().lower() not in ("yes", "no"):
            raise ScoreError(f"mme: {path} line {lineno}: the answer must be Yes or No, got {answer!r}")
        key = MMEKey(subtask, posixpath.splitext(image)[0], question_core(question))
        rows.append((key, answer.strip().lower()))
    return rows


def _is_question_file(parts: tuple[str, ...]) -> bool:
    if len(parts) == 1:  # evaluation-tool layout: files named after the subtasks, other files ignored
        return parts[0][: -len(".txt")] in PERCEPTION + COGNITION
    return parts[1:-1] in ((), ("questions_answers_YN",))


def read_mme(root: str) -> dict[MMEKey, str]:
    """Every (subtask, image, question) of an MME ground-truth folder -> ``yes`` / ``no``."""
    gt: dict[MMEKey, str] = {}
    for path, rel in files_below(root):
        if rel.suffix == ".txt" and _is_question_file(rel.parts):
            for key, answer in _gt_lines(path, rel):
                if key in gt:
                    raise ScoreError(f"mme: {path} repeats the question {key.question!r} for image {key.image!r}")
                gt[key] = answer
    if not gt:
        raise ScoreError(f"mme: no question files found below {root}")
    return gt


def _resolve(gt: dict[MMEKey, str]):
    def resolve(row: dict) -> MMEKey | None:
        subtask, _, image = str(row["question_id"]).partition("/")
        image = posixpath.splitext(posixpath.basename(image))[0]
        key = MMEKey(subtask, image, question_core(str(row.get("prompt", ""))))
        return key if key in gt else None

    return resolve


def _subtask_metrics(results: list[tuple[MMEKey, bool]]) -> dict:
    per_image: dict[str, list[bool]] = defaultdict(list)
    for key, correct in results:
        per_image[key.image].append(correct)
    acc = mean(float(c) for _, c in results)
    acc_plus = mean(float(all(v)) for v in per_image.values())
    return {"acc": acc, "acc_plus": acc_plus, "score": 100 * (acc + acc_plus), "n": len(results)}


@register("mme", read=read_mme, gt_format="MME folder (release layout, or eval-tool <subtask>.txt files)")
def score_mme(answers: list[dict], gt: dict[MMEKey, str], *, partial: bool = False) -> dict:
    """Per-subtask acc / acc+ / points and the perception and cognition totals."""
    matched = index_answers("mme", answers, _resolve(gt))
    keys = check_coverage("mme", gt, matched, partial)
    by_subtask: dict[str, list[tuple[MMEKey, bool]]] = defaultdict(list)
    for key in keys:
        by_subtask[key.subtask].append((key, mme_label(matched[key]["text"]) == gt[key]))
    subtasks = {name: _subtask_metrics(by_subtask[name]) for name in sorted(by_subtask)}
    return {
        "perception": sum(m["score"] for name, m in subtasks.items() if name in PERCEPTION),
        "cognition": sum(m["score"] for name, m in subtasks.items() if name in COGNITION),
        "subtasks": subtasks,
        "n": len(keys),
    }
