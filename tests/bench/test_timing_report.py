"""Summaries of timings, paired ratios, interleaving order and the report format."""

from __future__ import annotations

import json

import pytest
import torch

from vlsa.bench.report import Report, table
from vlsa.bench.timing import interleave, paired_ratios, summary


def test_summary_and_paired_ratios():
    assert summary([4.0, 1.0, 2.0]) == {"median_s": 2.0, "min_s": 1.0, "max_s": 4.0, "spread": 1.5}
    # a slow spell (second pair) hits both variants; the per-pair ratio cancels it
    assert paired_ratios([1.0, 3.0, 1.0], [2.0, 6.0, 2.5]) == {"median": 0.5, "min": 0.4, "max": 0.5}
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="no timings"):
        summary([])


def test_interleave_alternates_after_warmup():
    calls: list[str] = []
    times = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=2,
                       device=torch.device("cpu"))
    assert calls == ["a", "b"] * 3
    assert [len(times[k].wall) for k in "ab"] == [2, 2] and all(t >= 0 for t in times["a"].cpu)


def test_report_json_puts_metrics_on_top_and_refuses_clashes():
    report = Report("step", {"ratio": 0.5}, {"batch": 2}, {"device": "cpu"}, ["line"])
    data = json.loads(report.to_json())
    assert data["ratio"] == 0.5 and data["settings"] == {"batch": 2} and data["benchmark"] == "step"
    assert "line" in report.to_text() and "batch: 2" in report.to_text()
    with pytest.raises(ValueError, match="clash"):
        Report("x", {"settings": 1}, {}, {}).to_json()


def test_table_aligns_columns():
    assert table(["a", "bb"], [[1, 2], [333, 4]]) == ["a    bb", "1    2", "333  4"]
