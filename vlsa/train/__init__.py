"""Training: the DeepSpeed config, schedule, step, checkpoints (saving, per-rank restore, weights-only
loading), tracking and the Ray Train loop.

Ray and DeepSpeed are imported inside functions only (``driver``, ``loop``, ``state``, ``safe_load``),
so importing this package stays light.
"""
