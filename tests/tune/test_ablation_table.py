"""Tab. 4 at toy scale: each row differs from the row it is compared with in one component only (checked
on the resolved configs), and the seed summary, its Markdown and its bar chart say what the trials found."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from vlsa.config import flatten, load_config
from vlsa.tune.ablate import SEED_SEP, bar_chart, chart_values, seed_summary, seeded_points, summary_csv, summary_markdown
from vlsa.tune.grids import tab4_rows
from vlsa.tune.points import VARIANT_KEY

# The resolved-config keys each component of Tab. 4 may change (key suffixes).
COMPONENT_KEYS = {
    "resolution": ("model.projector.type",),
    "compressive encoding": ("model.projector.type",),
    "reconstruction": ("model.recon.enabled", ".lr.epigone", ".lr.denoiser"),
    "cognition alignment": (".data.ssft.p_vq", ".data.ssft.p_px"),
}


def changed(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


@pytest.mark.parametrize("preset", ["tiny", "llava_next_llama3_8b"])
def test_each_tab4_row_differs_from_its_comparison_row_in_one_component(preset):
    base = load_config(preset)
    rows = tab4_rows(base)
    resolved = {label: flatten(load_config(preset, row.point).to_dict()) for label, row in rows.items()}
    labels = list(rows)
    pairs = {(labels.index(label) + 1, labels.index(row.compared_with) + 1)
             for label, row in rows.items() if row.compared_with}
    assert pairs == {(2, 1), (3, 2), (4, 3), (5, 1), (6, 4)}  # as Sec. 4.2 of the paper compares them
    for label, row in rows.items():
        if not row.compared_with:
            continue
        keys = changed(resolved[label], resolved[row.compared_with])
        assert keys, (label, "is identical to", row.compared_with)
        assert all(key.endswith(COMPONENT_KEYS[row.component]) for key in keys), (label, row.compared_with, keys)
    assert resolved[labels[1]]["model.projector.type"] == "mlp2x_gelu"  # low resolution: no tiles
    assert resolved[labels[-1]]["model.recon.enabled"] and resolved[labels[-1]]["model.projector.type"] == "sa_perceiver"


def test_rows_run_once_per_seed():
    points = {"a": {"x": 1}, "b": {"x": 2}}
    seeded = seeded_points(points, [0, 1])
    assert seeded == {f"a{SEED_SEP}0": {"x": 1, "train.seed": 0}, f"a{SEED_SEP}1": {"x": 1, "train.seed": 1},
                      f"b{SEED_SEP}0": {"x": 2, "train.seed": 0}, f"b{SEED_SEP}1": {"x": 2, "train.seed": 1}}


@dataclass
class Trial:
    """What the summary reads of a Tune ``Result``."""

    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    error: Exception | None = None


def trial(row: str, seed: int, acc: float, seconds: float, error: Exception | None = None) -> Trial:
    per_type = {f"eval_accuracy/{k}": acc + i / 100 for i, k in enumerate(("color", "shape", "count", "position"))}
    return Trial({VARIANT_KEY: f"{row}{SEED_SEP}{seed}"},
                 {"eval_accuracy": acc, **per_type, "time_total_s": seconds}, error)


def test_the_seed_summary_gives_mean_and_spread_per_row_and_counts_failed_seeds():
    results = [trial("A", 0, 0.5, 100), trial("A", 1, 0.7, 120), trial("B", 0, 0.9, 90),
               trial("B", 1, 0.1, 90, error=RuntimeError("boom"))]
    table = seed_summary(results, ["A", "B"], [0, 1])
    (a, a_seeds, a_acc, a_color, a_shape, *_, a_time), (b, b_seeds, b_acc, *_) = table.rows
    assert (a, a_seeds, b, b_seeds) == ("A", 2, "B", 1)
    assert a_acc == pytest.approx((0.6, 0.5, 0.7)) and a_shape == pytest.approx((0.61, 0.51, 0.71))
    assert a_time == pytest.approx((110, 100, 120)) and b_acc == pytest.approx((0.9, 0.9, 0.9))
    markdown = summary_markdown(table, "T", "python -m vlsa.tune.ablate --grid tab4", {"B": "A"})
    assert "| A |  | 2 | 0.600 (0.500-0.700) | 0.600 (0.500-0.700) | 0.610 (0.510-0.710) |" in markdown
    assert "| B | A | 1 | 0.900 |" in markdown and "`python -m vlsa.tune.ablate --grid tab4`" in markdown
    assert summary_csv(table).splitlines()[1].startswith("A,2,0.6,0.5,0.7,")
    bars = chart_values(table)
    assert [m for m, _, _ in bars["color"]] == pytest.approx([0.6, 0.9])
    assert [m for m, _, _ in bars["position"]] == pytest.approx([0.63, 0.93])
    png = bar_chart(table, "T")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
