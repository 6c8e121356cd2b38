"""``python -m vlsa.bench <name> [--preset P] [--device cpu|cuda] [--json] [--smoke] [--set key=value ...]``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

from vlsa.bench import device as dev
from vlsa.bench.variants import bench_config

BENCHMARKS = {
    "flops": "vlsa.bench.flops_report",
    "step": "vlsa.bench.step",
    "mfu": "vlsa.bench.mfu",
    "label": "vlsa.bench.label",
    "label-row": "vlsa.bench.label_row",
    "ray-overhead": "vlsa.bench.ray_overhead",
    "latency": "vlsa.bench.latency",
    "build-memory": "vlsa.bench.build_memory",
    "suite": "vlsa.bench.suite",
    "startup": "vlsa.bench.startup",
    "sweep-overhead": "vlsa.tune.overhead",  # runs sweeps, so it lives in the tune package
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m vlsa.bench", description=__doc__)
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("--preset", default=None, help="preset or YAML path (default: bench_gpu on cuda, else bench_cpu)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--smoke", action="store_true", help="fewest repeats: checks that the benchmark runs")
    p.add_argument("--out", default="bench_results",
                   help="folder for files a benchmark writes (the latency plot, the suite's JSON)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, repeatable (e.g. bench.batch=8)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse, load the config, run the benchmark, print its report."""
    args = parse(argv)
    device = dev.resolve(args.device)
    preset = args.preset or ("bench_gpu" if device.type == "cuda" else "bench_cpu")
    cfg = bench_config(preset, args.overrides, smoke=args.smoke)
    dev.use_threads(cfg.bench.threads)
    # with --json, stdout is the one JSON object: what a benchmark's runs print (Tune's trial tables,
    # Ray's forwarded worker lines) goes to stderr with the other progress output
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        report = importlib.import_module(BENCHMARKS[args.name]).run(cfg, device, args.out)
    report.settings["command"] = "python -m vlsa.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    report.save()
    print(report.to_json() if args.json else report.to_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
