"""MMBench: option letters read with the LLaVA rules, CircularEval over the rounds of a question.

The option letter is read as in ``_choice`` including MMBench's own last rule (the answer is part of
exactly one option's text). LLaVA's ``--all-rounds`` answers carry ``round_id``, the rotated
``options`` and ``option_char`` (the original letter of each shown option): the shown letter is
mapped back before comparing. A question counts as right only when every round of it is right
(CircularEval); rows whose ``index`` differs by a multiple of 1,000,000 are rounds of one question,
as in the circular TSVs of the MMBench toolkit. ``answer_accuracy`` is the plain per-answer rate.
Ground truth: an MMBench TSV with answers (``mmbench_dev_20230712.tsv``: ``index, question, hint,
A, B, C, D, answer, category, l2-category, ...``); ``question_id`` is the ``index``.
"""

from __future__ import annotations

import csv
import io
import sys
from collections import defaultdict

from vlsa.eval.scorers import register
from vlsa.eval.scorers._choice import LETTERS, extract_choice
from vlsa.eval.scorers._common import ScoreError, check_coverage, index_answers, mean, mean_by, qid, read_text

_CIRCULAR_STRIDE = 1_000_000


def read_tsv(path: str) -> list[dict]:
    """Rows of a tab-separated file with a header (fields may be quoted, as pandas writes them)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images make very long fields
    rows = list(csv.DictReader(io.StringIO(read_text(path)), delimiter="\t"))
    if not rows:
        raise ScoreError(f"{path}: no rows below the header")
    return rows


def _is_blank(value: str | None) -> bool:
    """pandas writes a missing option as an empty field (or "nan")."""
    return value is None or value.strip().lower() in ("", "nan", "none")


def row_options(row: dict) -> list[str]:
    """The option texts of a row, in letter order, up to the first blank one."""
    options = []
    for letter in LETTERS:
        if letter not in row or _is_blank(row[letter]):
            break
        options.append(str(row[letter]))
    return options


def _answer_right(row: dict, record: dict) -> bool:
    options = record.get("options") or row_options(row)
    shown_as = record.get("option_char") or list(LETTERS[: len(options)])
    if len(shown_as) != len(options):
        raise ScoreError(
            f"mmbench: answer to index {record['question_id']!r} has {len(options)} options "
            f"but {len(shown_as)} option_char entries"
        )
    letter = extract_choice(record["text"], len(options), options)
    return letter is not None and shown_as[LETTERS.index(letter)] == str(row["answer"]).strip()


def _group(index: str) -> str:
    return str(int(index) % _CIRCULAR_STRIDE) if index.lstrip("-").isdigit() else index


@register("mmbench", read=read_tsv, gt_format="MMBench TSV with an 'answer' column; index")
def score_mmbench(answers: list[dict], gt: list[dict], *, partial: bool = False) -> dict:
    """CircularEval accuracy overall, per category and per l2-category."""
    if "answer" not in gt[0] or "index" not in gt[0]:
        raise ScoreError(f"mmbench: the TSV needs 'index' and 'answer' columns (the test split is scored by the "
                         f"MMBench server); it has {sorted(gt[0])}")
    rows = {qid(row["index"]): row for row in gt}

    def resolve(record: dict):
        key = qid(record["question_id"])
        return (key, int(record.get("round_id", 0))) if key in rows else None

    matched = index_answers("mmbench", answers, resolve)
    check_coverage("mmbench", rows, {key for key, _ in matched}, partial)
    groups: dict[str, list[bool]] = defaultdict(list)
    base: dict[str, dict] = {}  # the row a question's category is read from: its round 0 when present
    for (key, _), record in sorted(matched.items()):
        group = _group(key)
        groups[group].append(_answer_right(rows[key], record))
        base.setdefault(group, rows.get(group, rows[key]))
    right = {g: float(all(v)) for g, v in groups.items()}
    metrics = {
        "accuracy": mean(right.values()),
        "answer_accuracy": mean(float(v) for vs in groups.values() for v in vs),
        "n": len(groups),
        "n_answers": sum(len(v) for v in groups.values()),
    }
    for column, name in (("category", "per_category"), ("l2-category", "per_l2_category")):
        if column in gt[0]:
            metrics[name] = mean_by((base[g][column], s) for g, s in right.items())
    return metrics
