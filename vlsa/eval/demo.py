"""The demo's held-out evaluation: the trained model's answers and the best image-blind policy, both
scored by the ``demo`` benchmark scorer. Used by the demo recipe and by sweeps scored on held-out data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from vlsa.config import Config
from vlsa.data.demo import ANSWERS, QUESTIONS, DemoPaths, load_eval, question_kind
from vlsa.eval.infer import Answerer, answer_questions, read_questions
from vlsa.eval.score import score
from vlsa.eval.scorers.demo import demo_normalize, score_demo
from vlsa.model.builder import build_model
from vlsa.train.checkpoint import load_weights


def blind_policy(train_file: str) -> dict[str, str]:
    """The best image-blind policy: the most frequent (normalised) training answer per question type."""
    answers: dict[str, Counter] = {kind: Counter() for kind in QUESTIONS}
    for record in json.loads(Path(train_file).read_text()):
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2]):
            kind = question_kind(human["value"])
            if kind:
                answers[kind][demo_normalize(gpt["value"])] += 1
    return {kind: c.most_common(1)[0][0] for kind, c in answers.items() if c}


def blind_baseline(train_file: str, eval_file: str) -> dict:
    """Held-out accuracy of ``blind_policy``, scored by the ``demo`` benchmark scorer.

    Returns ``score_demo``'s dict (``accuracy``, ``per_type``, ``n``) plus ``policy`` (type -> answer)
    and ``chance`` (mean of 1/#answers).
    """
    policy = blind_policy(train_file)
    questions = load_eval(eval_file)
    answers = [{"question_id": q["question_id"], "text": policy.get(q["category"], "")} for q in questions]
    result = score_demo(answers, questions)
    result["policy"] = policy
    result["chance"] = float(np.mean([1 / len(ANSWERS[q["category"]]) for q in questions]))
    return result


def evaluate(cfg: Config, checkpoint: str, paths: DemoPaths) -> dict:
    """Held-out accuracy of the trained model and of the best image-blind policy (demo scorer)."""
    model = build_model(cfg)
    model.load_state_dict(load_weights(checkpoint), strict=True)
    answerer = Answerer(model, template=cfg.eval.template, max_new_tokens=cfg.eval.max_new_tokens, model_id="vlsa-tiny")
    questions = read_questions(paths.eval)
    rows = answer_questions(answerer, questions, paths.image_root, batch_size=cfg.eval.batch_size,
                            decode=cfg.label.decode)
    blind = blind_baseline(cfg.train.stages[-1].data.train, paths.eval)
    return {"model": score("demo", rows, questions), "blind": blind, "answers": rows}
