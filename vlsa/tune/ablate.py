"""Ablation tables: run a named grid (``vlsa.tune.grids.GRIDS``) as a sweep and tabulate its variants.

    python -m vlsa.tune.ablate --grid tab4 [--seeds 2] [--out DIR] [--only ROW ...] [key=value ...]
    python ray_jobs/ablate.py --grid tab5 --config C [--out DIR] [--only LABEL ...] [key=value ...]

``python -m vlsa.tune.ablate`` runs the rows on the embedded default's data and budget (the ``tiny``
preset, two workers, the demo data labelled by the Ray Data job), each row once per seed, and scores
every trial on the held-out demo questions: ``<DIR>/<grid>.md`` and ``.csv`` hold per row the held-out
accuracy overall and per question type (mean and min-max over the seeds) and the trial time, and
``<DIR>/<grid>.png`` the per-type accuracies as a bar chart. ``ray_jobs/ablate.py`` runs a grid once
on any config (one row per variant, one column per metric). Tables and chart are logged to the
sweep's MLflow run with the command. Re-running the same command continues an interrupted ablation:
finished variants are not trained again.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vlsa.config import Config, load_config
from vlsa.data.demo import ANSWERS
from vlsa.data.demo_setup import DEMO_RUN, prepare_demo
from vlsa.io import tracking
from vlsa.ray_session import add_num_cpus_argument, ray_session
from vlsa.train.step import LOSS_KEYS
from vlsa.tune.grids import GRIDS, tab4_rows
from vlsa.tune.points import VARIANT_KEY, named_grid, select_points
from vlsa.tune.sweep import SweepInterrupted, run_sweep
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


SEED_SEP = " / seed "
"""Joins a row label and a seed into the label of one trial."""
KINDS = tuple(ANSWERS)
"""The demo's question types, in the order the tables and the chart show them."""
ACCURACY_KEYS = ("eval_accuracy", *(f"eval_accuracy/{kind}" for kind in KINDS))
TIME_KEY = "time_total_s"
"""Tune's wall time of a trial (training and the held-out scoring of its final checkpoint)."""


def seeded_points(points: dict[str, dict[str, Any]], seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Every row once per seed (``train.seed``: data order, noise, initialisation of the new modules)."""
    return {f"{label}{SEED_SEP}{seed}": point | {"train.seed": seed}
            for label, point in points.items() for seed in seeds}


def _spread(values: list[float]) -> tuple[float, float, float] | None:
    return (sum(values) / len(values), min(values), max(values)) if values else None


def seed_summary(results, rows: list[str], seeds: Sequence[int]) -> Table:
    """One line per row: the seeds that finished, then (mean, min, max) over them of each held-out
    accuracy and of the trial time; a row without a finished seed has None there."""
    by_label = {r.config[VARIANT_KEY]: r for r in results}
    lines = []
    for row in rows:
        done = [by_label[f"{row}{SEED_SEP}{s}"] for s in seeds if f"{row}{SEED_SEP}{s}" in by_label]
        done = [r for r in done if r.error is None and r.metrics and "eval_accuracy" in r.metrics]
        cells = [_spread([float(r.metrics[k]) for r in done if k in r.metrics]) for k in (*ACCURACY_KEYS, TIME_KEY)]
        lines.append([row, len(done), *cells])
    return Table(["row", "seeds", *ACCURACY_KEYS, "trial_s"], lines)


def _summary_cell(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, tuple):
        return str(value)
    mean, low, high = value
    return f"{mean:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})" if high > low else f"{mean:.{digits}f}"


def summary_markdown(table: Table, title: str, command: str, compared: dict[str, str]) -> str:
    """The seed summary in Markdown: mean (min-max over seeds) per cell, each row's comparison row named."""
    heads = ["row", "compared with", "seeds", "accuracy", *KINDS, "trial time (s)"]
    lines = [f"# {title}", "", f"Command: `{command}`", "",
             "Held-out accuracy, mean over the seeds (min-max when they differ).", "",
             "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row, seeds, *cells in table.rows:
        texts = [_summary_cell(c, 3) for c in cells[:-1]] + [_summary_cell(cells[-1], 0)]
        lines.append("| " + " | ".join([row, compared.get(row, ""), str(seeds), *texts]) + " |")
    return "\n".join(lines) + "\n"


def summary_csv(table: Table) -> str:
    """The seed summary as CSV: mean, min and max columns per value."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "seeds", *(f"{c}_{s}" for c in table.columns[2:] for s in ("mean", "min", "max"))])
    for row, seeds, *cells in table.rows:
        writer.writerow([row, seeds, *(v for c in cells for v in (c or ("", "", "")))])
    return out.getvalue()


def chart_values(table: Table) -> dict[str, list[tuple[float, float, float]]]:
    """Per question type, the (mean, min, max) of each row of a seed summary ((0, 0, 0) where none finished)."""
    column = {key: i for i, key in enumerate(table.columns)}
    return {kind: [row[column[f"eval_accuracy/{kind}"]] or (0.0, 0.0, 0.0) for row in table.rows] for kind in KINDS}


def bar_chart(table: Table, title: str) -> bytes:
    """PNG bytes: per row, grouped bars of the per-type held-out accuracy (mean), min-max as error bars."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the chart is written, never shown
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=110)
    width = 0.8 / len(KINDS)
    for k, (kind, cells) in enumerate(chart_values(table).items()):
        means = [c[0] for c in cells]
        errors = [[c[0] - c[1] for c in cells], [c[2] - c[0] for c in cells]]
        ax.bar([i + (k - (len(KINDS) - 1) / 2) * width for i in range(len(cells))], means, width, yerr=errors,
               capsize=2, label=kind)
    ax.axhline(0.25, color="grey", linewidth=0.8, linestyle="--", label="chance")
    ax.set_xticks(range(len(table.rows)), [row[0] for row in table.rows], rotation=15, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncols=5, loc="upper left")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


def _write_and_log(out_dir: str, run_id: str, uri: str, files: dict[str, str | bytes]) -> dict[str, str]:
    """Write each file under ``out_dir`` and log it to the sweep's run under ``ablation/``; returns the paths."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    mlflow_client, paths = tracking.client(uri), {}
    for file_name, content in files.items():
        path = Path(out_dir) / file_name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        mlflow_client.log_artifact(run_id, str(path), "ablation")
        paths[file_name] = str(path)
    return paths


def run_ablation(cfg: Config, grid: str, points: dict[str, dict[str, Any]], out_dir: str, *,
                 only: Sequence[str] = (), name: str = "", command: str = "", seeds: Sequence[int] = (),
                 compared: dict[str, str] | None = None) -> dict[str, Any]:
    """Run grid ``grid`` (its ``points``: ``{label: {dotted path: value}}``) over ``cfg`` on the current Ray
    cluster; write and log its table. With ``seeds``, every row runs once per seed and the table holds
    the held-out accuracies' mean and spread per row, with a bar chart; ``compared``: row -> the row it
    is compared with (a column of that table)."""
    rows = list(only) or list(points)
    unknown = [row for row in rows if row not in points]
    if unknown:
        raise ValueError(f"grid {grid} has no row(s) {unknown}; its rows: {list(points)}")
    trial_points = seeded_points({r: points[r] for r in rows}, seeds) if seeds else points
    labels = list(trial_points) if seeds else rows
    space = named_grid(trial_points) if seeds or not only else select_points(named_grid(points), labels)
    outcome = run_sweep(cfg, space, name or f"{cfg.run.name}-{grid}", command=command)
    uri = tracking.tracking_uri(cfg.run.mlflow.tracking_uri)
    title = f"Ablation {grid} ({cfg.preset})"
    if seeds:
        table = seed_summary(outcome.results, rows, seeds)
        files = {f"{grid}.md": summary_markdown(table, title, command, compared or {}), f"{grid}.csv": summary_csv(table),
                 f"{grid}.png": bar_chart(table, f"{title}, held-out accuracy per question type")}
        failed = [row[0] for row in table.rows if row[1] < len(seeds)]
    else:
        table = ablation_table(outcome.results, labels, cfg.tune.metric)
        files = {f"{grid}.md": to_markdown(table, title, command), f"{grid}.csv": to_csv(table)}
        failed = [row[0] for row in table.rows if row[1] != "OK"]
    paths = _write_and_log(out_dir, outcome.run_id, uri, files)
    return {"markdown": paths[f"{grid}.md"], "csv": paths[f"{grid}.csv"], "chart": paths.get(f"{grid}.png", ""),
            "mlflow_run_id": outcome.run_id, "failed": failed}


# ------------------------------------------------------------------------------------------ command

PROGRAM = "python -m vlsa.tune.ablate"
ABLATION_OVERRIDES = (*DEMO_RUN, "tune.metric=eval_accuracy", "tune.mode=max")
"""The embedded default's workers, every trial scored on the held-out demo questions (given first: the
command line's overrides win)."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, choices=sorted(GRIDS))
    parser.add_argument("--config", default="tiny", help="preset name or YAML path (default: tiny, the embedded default)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per row (train.seed 0, 1, ...; default 2)")
    parser.add_argument("--data", default="demo_data", help="folder of the demo data and its labels (default: "
                        "the embedded default's, so its labels are reused)")
    parser.add_argument("--out", default="ablations", help="folder of the table and the chart")
    parser.add_argument("--only", action="append", default=[], metavar="ROW",
                        help="run only this row (repeatable; default: every row of the grid)")
    parser.add_argument("--name", default="", help="sweep name (default: <run.name>-<grid>)")
    add_num_cpus_argument(parser)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.stages.0.max_steps=10")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The command line; prints where the table and the chart went as one JSON line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the labeling job's progress
    cfg = load_config(args.config, [*ABLATION_OVERRIDES, *args.overrides])
    compared = {row: r.compared_with for row, r in tab4_rows(cfg).items()} if args.grid == "tab4" else {}
    with ray_session(args.num_cpus):
        cfg, _ = prepare_demo(cfg, Path(args.data).resolve())
        summary = run_ablation(cfg, args.grid, GRIDS[args.grid](cfg), args.out, only=args.only, name=args.name,
                               command=shlex.join([*PROGRAM.split(), *argv]), seeds=range(args.seeds),
                               compared=compared)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


if __name__ == "__main__":
    try:
        sys.exit(1 if main()["failed"] else 0)
    except SweepInterrupted as err:  # Ctrl+C: the state is saved, say how to continue
        sys.exit(f"interrupted: {err}")
