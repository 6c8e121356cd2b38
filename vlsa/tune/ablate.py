"""Ablation tables: run a named grid (one of ``tune_spaces.GRIDS``) as a sweep and tabulate its variants.

    python ray_jobs/ablate.py --grid tab5 --config C [--out DIR] [--only LABEL ...] [key=value ...]

Writes ``<DIR>/<grid>.md`` and ``<DIR>/<grid>.csv`` (one row per variant, one column per metric) and
logs both to the sweep's MLflow run, with the command that produced them. Re-running the same
command continues an interrupted ablation: finished variants are not trained again.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vlsa.config import Config
from vlsa.io import tracking
from vlsa.train.step import LOSS_KEYS
from vlsa.tune.points import VARIANT_KEY, named_grid, select_points
from vlsa.tune.sweep import run_sweep
from vlsa.tune.tracking import numeric_metrics

EXTRA_METRICS = ("eval_accuracy", "eval_blind_accuracy")
"""Columns after the training losses, when the trials measured them."""


@dataclass(frozen=True)
class Table:
    """An ablation table: the variant label, then metric columns; a missing value is None."""

    columns: list[str]
    rows: list[list[Any]]


def metric_columns(metric: str, found: set[str]) -> list[str]:
    """The sweep's metric first, then the losses and held-out metrics that some variant reported."""
    columns = [metric] if metric in found else []
    return columns + [k for k in (*LOSS_KEYS, *EXTRA_METRICS) if k in found and k != metric]


def ablation_table(results, labels: list[str], metric: str) -> Table:
    """One row per variant in ``labels`` order: its status and the last value of each metric."""
    by_label = {r.config[VARIANT_KEY]: r for r in results}
    missing = [label for label in labels if label not in by_label]
    if missing:
        raise RuntimeError(f"the sweep has no trial for variant(s) {missing}; it ran {sorted(by_label)}")
    # A trial's reports carry every metric forward, so its last result holds the newest of each.
    values = {label: numeric_metrics(by_label[label].metrics or {}) for label in labels}
    columns = metric_columns(metric, set().union(*values.values()))
    rows = [[label, "ERROR" if by_label[label].error else "OK", *(values[label].get(c) for c in columns)]
            for label in labels]
    return Table(["variant", "status", *columns], rows)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def to_markdown(table: Table, title: str, command: str) -> str:
    """The table in Markdown, under a title and the command that produced it."""
    lines = [f"# {title}", "", f"Command: `{command}`", "",
             "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """The table as CSV (full-precision numbers, empty cells for missing values)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows([["" if v is None else v for v in row] for row in table.rows])
    return out.getvalue()


def run_ablation(cfg: Config, grid: str, points: dict[str, dict[str, Any]], out_dir: str, *,
                 only: Sequence[str] = (), name: str = "", command: str = "") -> dict[str, Any]:
    """Run grid ``grid`` (its ``points``: ``{label: {dotted path: value}}``) over ``cfg`` on the current Ray
    cluster; write and log its table."""
    labels = list(only) or list(points)
    space = select_points(named_grid(points), labels) if only else named_grid(points)
    outcome = run_sweep(cfg, space, name or f"{cfg.run.name}-{grid}", command=command)
    table = ablation_table(outcome.results, labels, cfg.tune.metric)
    texts = {f"{grid}.md": to_markdown(table, f"Ablation {grid} ({cfg.preset})", command),
             f"{grid}.csv": to_csv(table)}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    mlflow_client = tracking.client(tracking.tracking_uri(cfg.run.mlflow.tracking_uri))
    for file_name, text in texts.items():
        (Path(out_dir) / file_name).write_text(text)
        mlflow_client.log_text(outcome.run_id, text, f"ablation/{file_name}")
    return {"markdown": str(Path(out_dir) / f"{grid}.md"), "csv": str(Path(out_dir) / f"{grid}.csv"),
            "mlflow_run_id": outcome.run_id, "failed": [row[0] for row in table.rows if row[1] != "OK"]}
