"""Benchmarks: ``python -m vlsa.bench <name> [--preset P] [--device cpu|cuda] [--json] [--smoke]``.

Model-level benchmarks run in plain PyTorch (no Ray); only ``ray-overhead`` imports Ray, inside its
function. Each prints its figures together with the exact settings and machine; see docs/benchmarks.md.
"""
