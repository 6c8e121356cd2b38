"""Hyper-parameter sweeps (Ray Tune over full Ray Train runs) and ablation tables.

Nothing here imports Ray at module import time; ``vlsa.tune.sweep`` builds the Tune objects.
"""
