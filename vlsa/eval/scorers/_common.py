"""Shared plumbing of the scorers: reading files, matching answers to questions, averaging.

Answers arrive in the LLaVA answer-file format: one JSON object per line with ``question_id``,
``prompt``, ``text``, ``answer_id``, ``model_id`` and ``metadata``. Only ``question_id`` and
``text`` are required here; a scorer that needs ``prompt`` (MME, TextVQA with LLaVA's ids) says so.
Question ids are compared as strings, so ``262148000`` and ``"262148000"`` name the same question.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Hashable, Iterable

from vlsa.io import storage


class ScoreError(ValueError):
    """A ground-truth or answer file that cannot be scored; the message names the file and record."""


def read_text(path: str) -> str:
    """The file at ``path`` (local or ``s3://``) as UTF-8 text, with a clear error when it is absent."""
    try:
        return storage.read_bytes(str(path)).decode("utf-8-sig")
    except FileNotFoundError as err:
        raise ScoreError(f"file not found: {path}") from err
    except UnicodeDecodeError as err:
        raise ScoreError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def read_json(path: str) -> Any:
    """One JSON document; the error names the file, line and column of a syntax problem."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ScoreError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err


def read_jsonl(path: str) -> list[dict]:
    """One JSON object per non-blank line; the error names the file and the line number."""
    rows = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ScoreError(f"{path}: line {lineno} is not valid JSON: {err.msg}") from err
        if not isinstance(row, dict):
            raise ScoreError(f"{path}: line {lineno} is a JSON {type(row).__name__}, expected an object")
        rows.append(row)
    return rows


def read_answer_file(path: str) -> list[dict]:
    """Answers in the LLaVA answer-file JSONL format, each checked by :func:`check_answers`."""
    return check_answers(read_jsonl(path), source=str(path))


def check_answers(answers: Iterable[dict], source: str = "answers") -> list[dict]:
    """Every answer must be an object with a ``question_id`` and a string ``text``."""
    rows = list(answers)
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ScoreError(f"{source}: record {i} is a {type(row).__name__}, expected an object")
        if row.get("question_id") is None:
            raise ScoreError(f"{source}: record {i} has no 'question_id' (keys: {sorted(row)})")
        if not isinstance(row.get("text"), str):
            raise ScoreError(
                f"{source}: record {i} (question_id {row['question_id']!r}) needs a string 'text', "
                f"got {type(row.get('text')).__name__}"
            )
    return rows


def qid(value: Any) -> str:
    """The canonical form of a question id: its string."""
    return str(value)


def files_below(root: str) -> list[tuple[str, PurePosixPath]]:
    """(full path, path relative to ``root``) of every file below a local folder or ``s3://`` prefix."""
    base = str(root).rstrip("/")
    found = []
    for path in storage.list_files(base):
        if storage.is_s3(base):
            rel = PurePosixPath(path[len(base):].lstrip("/"))
        else:
            rel = PurePosixPath(Path(path).relative_to(Path(base).expanduser()).as_posix())
        found.append((path, rel))
    if not found:
        raise ScoreError(f"no files found below {root}")
    return found


def by_question_id(items: dict) -> Callable[[dict], str | None]:
    """A resolver for :func:`index_answers`: the answer's ``question_id`` when the ground truth has it."""
    return lambda row: qid(row["question_id"]) if qid(row["question_id"]) in items else None


def index_answers(
    benchmark: str, answers: list[dict], resolve: Callable[[dict], Hashable | None]
) -> dict[Hashable, dict]:
    """Map each answer to the ground-truth key ``resolve`` gives it; unknown or repeated keys are errors."""
    matched: dict[Hashable, dict] = {}
    unknown = []
    for row in answers:
        key = resolve(row)
        if key is None:
            unknown.append(row["question_id"])
        elif key in matched:
            raise ScoreError(
                f"{benchmark}: question {key!r} is answered twice "
                f"(question_id {matched[key]['question_id']!r} and {row['question_id']!r})"
            )
        else:
            matched[key] = row
    if unknown:
        raise ScoreError(
            f"{benchmark}: {len(unknown)} answer(s) name questions that are not in the ground truth "
            f"(first: {', '.join(repr(u) for u in unknown[:5])})"
        )
    return matched


def check_coverage(benchmark: str, expected: Iterable[Hashable], answered: Iterable[Hashable], partial: bool) -> list:
    """The ground-truth keys to score: all of them, or (``partial``) only the answered ones."""
    expected = list(expected)
    answered = set(answered)
    missing = [key for key in expected if key not in answered]
    if missing and not partial:
        raise ScoreError(
            f"{benchmark}: {len(missing)} of {len(expected)} ground-truth questions have no answer "
            f"(first: {', '.join(repr(m) for m in missing[:5])}); pass --partial (partial=True) "
            "to score only the answered questions"
        )
    kept = [key for key in expected if key in answered]
    if not kept:
        raise ScoreError(f"{benchmark}: no answered question to score ({len(expected)} in the ground truth)")
    return kept


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(sum(values)) / len(values) if values else 0.0


def mean_by(groups: Iterable[tuple[Any, float]]) -> dict[str, float]:
    """Average score per group label, labels sorted: ``[("a", 1.0), ("a", 0.0)]`` -> ``{"a": 0.5}``."""
    buckets: dict[str, list[float]] = defaultdict(list)
    for label, value in groups:
        buckets[str(label)].append(value)
    return {label: mean(buckets[label]) for label in sorted(buckets)}


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Nested metric dicts as flat ``a/b`` names with numeric values, for MLflow and tables."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, prefix=f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat
