"""The benchmark registry: every public module in this package registers one scorer family.

A new benchmark is one file here that calls :func:`register`; it is found by name on first use::

    @register("mybench", read=read_json, gt_format="MyBench questions JSON")
    def score_mybench(answers: list[dict], gt, *, partial: bool = False) -> dict: ...

``read`` turns a ground-truth path into the parsed official annotations; the scorer gets the
answer records (LLaVA answer-file rows) and that parsed object, and returns a metrics dict.
Modules whose names start with ``_`` are helpers and register nothing.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

from vlsa.eval.scorers._common import ScoreError

Scorer = Callable[..., dict]


@dataclass(frozen=True)
class Benchmark:
    """One registered scorer."""

    name: str
    """Name used on the command line (``--benchmark``)."""
    read: Callable[[str], Any]
    """Ground-truth path (local or ``s3://``) -> parsed official annotations."""
    evaluate: Scorer
    """``evaluate(answers, gt, *, partial=False, **options) -> metrics``."""
    gt_format: str
    """One line saying which ground-truth format is accepted."""
    options: tuple[str, ...] = ()
    """Extra keyword options the scorer accepts (e.g. ``split``)."""


_REGISTRY: dict[str, Benchmark] = {}
_discovered = False


def register(name: str, *, read: Callable[[str], Any], gt_format: str) -> Callable[[Scorer], Scorer]:
    """Decorator adding a scorer under ``name``; its keyword-only options other than ``partial`` are
    taken from its signature. Registering a taken name is an error."""

    def add(fn: Scorer) -> Scorer:
        if name in _REGISTRY:
            raise ValueError(f"benchmark {name!r} is already registered by {_REGISTRY[name].evaluate.__module__}")
        params = inspect.signature(fn).parameters.values()
        options = tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "partial")
        _REGISTRY[name] = Benchmark(name=name, read=read, evaluate=fn, gt_format=gt_format, options=options)
        return fn

    return add


def unregister(name: str) -> None:
    """Remove a benchmark (for tests and plug-ins that replace one)."""
    _REGISTRY.pop(name, None)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    _discovered = True


def get(name: str) -> Benchmark:
    """The registered benchmark ``name``; the error lists the known names."""
    _discover()
    if name not in _REGISTRY:
        raise ScoreError(f"unknown benchmark {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Every registered benchmark name, sorted."""
    _discover()
    return sorted(_REGISTRY)
