"""A benchmark's result: its figures, its exact settings and the machine, as text or JSON."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    """What a benchmark prints. ``metrics`` become top-level JSON keys; ``lines`` are the human-readable body."""

    benchmark: str
    metrics: dict[str, Any]
    settings: dict[str, Any]
    machine: dict[str, Any]
    lines: list[str] = field(default_factory=list)
    date: str = field(default_factory=lambda: datetime.date.today().isoformat())
    file: str | None = None
    """Where the JSON is also written (by the command line, once the command is in the settings)."""

    def to_json(self) -> str:
        """One JSON object: benchmark, date, the metrics, then settings and machine."""
        reserved = {"benchmark", "date", "settings", "machine"} & set(self.metrics)
        if reserved:
            raise ValueError(f"{self.benchmark}: metric names {sorted(reserved)} clash with report keys")
        return json.dumps({"benchmark": self.benchmark, "date": self.date, **self.metrics,
                           "settings": self.settings, "machine": self.machine}, indent=2, default=str)

    def save(self) -> None:
        """Write the JSON to ``file`` (a no-op without one)."""
        if self.file:
            from pathlib import Path

            Path(self.file).parent.mkdir(parents=True, exist_ok=True)
            Path(self.file).write_text(self.to_json() + "\n")

    def to_text(self) -> str:
        """The report as printed without ``--json``."""
        out = [f"== vlsa.bench {self.benchmark} ({self.date})", *self.lines, "", "settings:"]
        out += [f"  {k}: {v}" for k, v in self.settings.items()]
        out += ["machine:"] + [f"  {k}: {v}" for k, v in self.machine.items()]
        return "\n".join(out)


def fmt_seconds(seconds: float) -> str:
    """Seconds in a readable unit."""
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.3f} s"


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Left-aligned text table."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
