"""Benchmark scoring: official-equivalent scorers behind one registry.

``from vlsa.eval.score import score``; ``score(benchmark, predictions, ground_truth)`` returns a
metrics dict, and ``python -m vlsa.eval.score`` is the command-line form. (The function is not
re-exported here: ``vlsa.eval.score`` names the module.) Names below resolve on first use, so
importing this package stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from vlsa.eval import scorers

_LAZY = {
    "ScoreError": "vlsa.eval.scorers._common",
    "read_answer_file": "vlsa.eval.scorers._common",
    "flatten_metrics": "vlsa.eval.scorers._common",
    "register": "vlsa.eval.scorers",
    "Benchmark": "vlsa.eval.scorers",
}

__all__ = [*_LAZY, "available_benchmarks"]


def available_benchmarks() -> list[str]:
    """Every registered benchmark name."""
    return scorers.names()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlsa.eval' has no attribute {name!r}")
