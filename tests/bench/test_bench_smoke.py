"""Every benchmark in smoke mode on the tiny preset, through the command line, with its JSON parsed.

No timing is asserted (the machine is shared); what is checked is that each figure is there, has the
right type and a possible value, and agrees with the FLOP counter and the model where it can.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import statistics

import pytest

from vlsa.bench.__main__ import main
from vlsa.model.anyres import squarest_grid

pytestmark = pytest.mark.integration  # every benchmark end to end: kept out of the fast unit tier


def bench_json(capsys, name: str, cache_dir: str, *extra: str) -> dict:
    """Run ``python -m vlsa.bench NAME --preset tiny --smoke --json`` in-process and parse its stdout."""
    return bench_json_and_log(capsys, name, cache_dir, *extra)[0]


def bench_json_and_log(capsys, name: str, cache_dir: str, *extra: str) -> tuple[dict, str]:
    """``bench_json`` and what the run wrote to stderr."""
    capsys.readouterr()
    assert main([name, "--preset", "tiny", "--device", "cpu", "--smoke", "--json",
                 "--set", f"model.cache_dir={cache_dir}", *extra]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["benchmark"] == name
    assert report["settings"]["command"].startswith(f"python -m vlsa.bench {name} ")
    assert report["machine"]["device"] == "cpu" and report["machine"]["cpu_count"] >= 1
    return report, captured.err


@pytest.fixture(scope="module")
def suite(cache_dir, tmp_path_factory) -> tuple[dict, str]:
    """One ``suite`` run (step, mfu, label and latency) whose sections the per-benchmark tests check:
    the suite is how these four run on a GPU, and running each again alone would double the tier's time."""
    out, printed = tmp_path_factory.mktemp("bench-suite"), io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["suite", "--preset", "tiny", "--device", "cpu", "--smoke", "--json", "--out", str(out),
                     "--set", f"model.cache_dir={cache_dir}"]) == 0
    report = json.loads(printed.getvalue())
    assert json.loads((out / "suite-cpu.json").read_text()) == report  # the file is what was printed
    return report, str(out)


def section(suite: tuple[dict, str], name: str) -> dict:
    """One benchmark's report inside the suite's file."""
    r = suite[0][name]
    assert r["benchmark"] == name and r["settings"]["preset"] == "tiny"
    return r


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def check_timing(stats: dict) -> None:
    assert set(stats) == {"median_s", "min_s", "max_s", "spread"}
    assert 0 < stats["min_s"] <= stats["median_s"] <= stats["max_s"] and stats["spread"] >= 0


def test_flops(capsys, cache_dir):
    r = bench_json(capsys, "flops", cache_dir)
    steps = r["step_flops"]
    assert 0 < r["flop_ratio"] < 1 and r["flop_ratio"] == pytest.approx(steps["vlsa"] / steps["anyres"])
    assert set(r["step_flops_by_part"]["vlsa"]) == {"vision", "projector", "llm", "epigone", "denoiser"}
    assert set(r["step_flops_by_part"]["anyres"]) == {"vision", "projector", "llm"}
    assert sum(r["step_flops_by_part"]["vlsa"].values()) == pytest.approx(steps["vlsa"])
    assert 0 < r["prefill_flops_per_image"]["vlsa"] < r["prefill_flops_per_image"]["anyres"]
    label = r["label_flops_per_image"]
    assert positive(label["vq"]) and positive(label["vae"]) and label["total"] == pytest.approx(sum(
        label[k] for k in ("vq", "codebook_search", "vae")))


def test_step(suite):
    r = section(suite, "step")
    assert positive(r["ratio"]) and positive(r["cpu_ratio"]) and r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
    assert 0 < r["flop_ratio"] < 1 and r["flop_ratio"] == pytest.approx(r["flops"]["vlsa"] / r["flops"]["anyres"])
    check_timing(r["vlsa"])
    check_timing(r["anyres"])
    tiles, l = r["settings"]["tiles"], r["visual_tokens"]["vlsa"]
    rows = squarest_grid(tiles)[0]
    assert r["visual_tokens"]["anyres"] == (tiles + 1) * l + rows * math.isqrt(l)  # LLaVA-NeXT: a newline per row
    assert r["settings"]["repeats"] == 2 and r["settings"]["warmup"] == 1  # --smoke
    mem = r["memory"]
    for name in ("vlsa", "anyres"):  # on a CPU only what each keeps is counted; a step's peak is not measured
        assert positive(mem[name]["resident_gib"]) and mem[name]["step_gib"] is None and mem[name]["peak_gib"] is None
    assert mem["vlsa"]["resident_gib"] > mem["anyres"]["resident_gib"]  # denoiser, VAE and Epigone
    assert r["process_peak_gib"] >= mem["vlsa"]["resident_gib"] + mem["anyres"]["resident_gib"]
    assert "ru_maxrss" in r["process_peak_source"]
    assert all(0 < x["chunked_bytes"] < x["plain_bytes"] for x in r["lm_logits"].values())


def test_mfu(suite):
    r = section(suite, "mfu")
    assert positive(r["mfu"]) and positive(r["flops_per_step"]) and positive(r["peak_flops"])
    assert r["mfu"] == pytest.approx(r["achieved_flops"] / r["peak_flops"])
    assert r["achieved_flops"] == pytest.approx(r["flops_per_step"] / r["step"]["median_s"])
    assert r["peak_source"].startswith("measured") and r["clock"] == "process CPU seconds"
    assert sum(r["flop_share"].values()) == pytest.approx(1.0)
    assert set(r["time_share"]) >= {"llm forward", "vision forward", "denoiser forward", "backward", "optimizer"}
    assert sum(r["time_share"].values()) == pytest.approx(1.0)
    check_timing(r["step"])


def test_label(suite):
    r = section(suite, "label")
    assert positive(r["images_per_s"]) and positive(r["device_images_per_s"])
    assert r["device_images_per_s"] >= r["images_per_s"]  # model time is part of the total
    assert 0 < r["busy_fraction"] <= 1
    per = r["seconds_per_image"]
    assert set(per) == {"decode", "prepare", "compute", "model", "total"}
    assert per["total"] == pytest.approx(per["decode"] + per["prepare"] + per["compute"])
    assert r["settings"]["images"] == 4
    for mode in ("inline", "background"):
        assert 0 < r["actor_busy_fraction"][mode] <= 1 and positive(r["actor_images_per_s"][mode])
    assert positive(r["flops_per_image"]["total"])
    assert r["achieved_flops"] == pytest.approx(r["flops_per_image"]["total"] * r["device_images_per_s"])
    assert r["peak_flops"] is r["images_per_s_bound"] is r["flop_utilisation"] is None  # no listed peak on a CPU


def test_label_row(capsys, cache_dir):
    r = bench_json(capsys, "label-row", cache_dir)
    assert r["row_bytes_with_pixels"] > r["row_bytes_without_pixels"] > 0
    assert 0 < r["pixels_share"] < 1 and positive(r["recompute_ms_per_image"]) and positive(r["decode_ms_per_image"])
    assert r["recomputed_equal_stored"] is True
    assert r["settings"]["pixels"] == [32, 32, 3] and r["settings"]["latent"] == [16, 8, 8]  # the tiny VAE halves twice


def test_latency(suite):
    r = section(suite, "latency")
    rows = r["rows"]
    assert [row["tiles"] for row in rows] == [1, 4]  # --smoke grids [1, 2]
    assert rows[1]["side"] == 2 * rows[0]["side"]
    for row in rows:
        l, g = row["vlsa"]["tokens"], math.isqrt(row["tiles"])  # a square image of g x g tiles
        assert l < row["anyres"]["tokens"] == l + row["tiles"] * l + g * math.isqrt(l)  # base, grid, newlines
        assert positive(row["vlsa"]["latency_s"]) and positive(row["anyres"]["latency_s"]) and positive(row["ratio"])
        assert 0 < row["flop_ratio"] < 1
    assert rows[1]["flop_ratio"] < rows[0]["flop_ratio"]  # AnyRes grows with the tiles, VLSA does not
    if importlib.util.find_spec("matplotlib") is None:
        assert r["plot"] is None
    else:
        with open(r["plot"], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # two Ray Train runs (about 100 s on 2 cores); the figure is recorded in docs/benchmarks.md
def test_ray_overhead(capsys, cache_dir):
    r, log = bench_json_and_log(capsys, "ray-overhead", cache_dir)
    # Ray Train's placement-group cleaner queries the State API; without the dashboard that serves it,
    # the output fills with failed queries.
    assert "Failed to query Ray Train Controller actor state" not in log
    for key in ("ratio", "cpu_ratio", "plain_drift", "plain_step_s", "ray_step_s", "report_s"):
        assert positive(r[key]), key
    assert r["ratio"] == pytest.approx(r["ray_step_s"] / r["plain_step_s"])
    assert r["settings"]["workers"] == 1 and r["ray_startup_s"] > 0


@pytest.mark.slow  # four Ray Train runs (two pairs) of a few steps; the figure is recorded in docs/benchmarks.md
def test_sweep_overhead(capsys, cache_dir):
    small = ("demo.train_images=16", "demo.eval_images=4", "label.batch_size=8", "train.stages.0.max_steps=3",
             "train.stages.1.max_steps=3")
    r, _ = bench_json_and_log(capsys, "sweep-overhead", cache_dir, *(a for o in small for a in ("--set", o)))
    assert len(r["ratios"]) == 2 and r["ratio"] == pytest.approx(statistics.median(r["ratios"]))
    for key in ("job_step_s", "trial_step_s", "compute_ratio", "outside_ratio_adjusted"):
        assert positive(r[key]), key
    assert r["settings"]["stage_steps"] == [3, 3]


def test_unknown_benchmark_is_refused():
    with pytest.raises(SystemExit):
        main(["nope"])


def test_tiles_over_the_cap_are_refused(capsys, cache_dir):
    with pytest.raises(ValueError, match="bench.tiles=5 exceeds model.encoding.max_tiles=4"):
        main(["step", "--preset", "tiny", "--smoke", "--set", f"model.cache_dir={cache_dir}", "--set", "bench.tiles=5"])


def test_suite_writes_every_benchmark_to_one_json(suite):
    r = suite[0]
    assert r["settings"]["benchmarks"] == ["step", "mfu", "label", "latency"]
    for name in ("step", "mfu", "label", "latency"):
        assert r[name]["benchmark"] == name and positive(r["seconds"][name])
        assert r[name]["settings"]["preset"] == "tiny" and "machine" not in r[name]
    s = r["summary"]
    assert s["step_ratio"] == r["step"]["ratio"] and s["mfu"] == r["mfu"]["mfu"] and positive(s["mfu"])
    assert (s["step_ratio_goal"], s["mfu_goal"]) == (0.35, 0.45)
    assert s["memory_gib"] == r["step"]["memory"] and positive(s["memory_gib"]["vlsa"]["resident_gib"])
    assert s["label_images_per_s"] == r["label"]["images_per_s"] and len(s["latency_ratios"]) == 2
    assert s["label_images_per_s_bound"] is None  # on a GPU of listed peak: the labeling benchmark's bound
    assert s["total_seconds"] == pytest.approx(sum(r["seconds"].values()))
    assert r["benchmark"] == "suite" and r["machine"]["device"] == "cpu"
    assert r["settings"]["command"].startswith("python -m vlsa.bench suite ")


@pytest.mark.integration
@pytest.mark.slow
def test_build_memory(capsys, cache_dir):
    """Spawns gloo worker processes: a plain build, then 1 and 2 ZeRO-3 workers (tiny's ZeRO-3 stage)."""
    r = bench_json(capsys, "build-memory", cache_dir)
    assert set(r["workers"]) == {"1", "2"} and [len(r["workers"][w]) for w in ("1", "2")] == [1, 2]
    for ranks in r["workers"].values():
        for w in ranks:
            assert w["partitioned"] and all(positive(v) for v in w["gib"].values())
            assert w["gib"]["start"] <= w["gib"]["build_peak"] <= w["gib"]["peak"]
            assert {"build", "forward_0", "backward_0", "after_0", "forward_1"} <= set(w["phase_peaks_gib"])
            assert max(w["phase_peaks_gib"].values()) <= w["gib"]["peak"] + 0.01  # sampled peaks within the true one
    one, two = r["workers"]["1"][0], r["workers"]["2"]
    assert one["held_parameters"] >= r["parameters"] and one["held_parameters"] / 2 <= two[0]["held_parameters"]
    assert sum(w["held_parameters"] for w in two) < 1.01 * one["held_parameters"]  # split, not copied
    assert r["ratio"] == pytest.approx(r["peak_gib_2_workers"] / r["peak_gib_1_worker"])
    assert two[0]["losses"] == two[1]["losses"]  # one model trained by both workers


@pytest.mark.slow  # two data sets of 100x the size, each to a first step (about 120 s on 2 cores)
def test_startup(capsys, cache_dir):
    r = bench_json(capsys, "startup", cache_dir, "--set", "demo.train_images=4", "--set", "demo.eval_images=2",
                   "--set", "bench.repeats=1")
    small, large = r["settings"]["sizes"]
    assert large == 100 * small and small >= 4
    assert positive(r["ratio"]) and r["ratio"] == pytest.approx(r[f"first_step_s_{large}"] / r[f"first_step_s_{small}"])
    for size in (small, large):
        assert 0 < r[f"data_s_{size}"] < r[f"first_step_s_{size}"] and positive(r[f"validate_s_{size}"])
