"""Training: the DeepSpeed config, schedule, step, checkpoints (saving, per-rank restore, weights-only
loading) and the Ray Train loop (tracking is in ``vlsa.io.tracking``, the DeepSpeed CPU patch in
``vlsa.model.deepspeed_cpu``).

Ray and DeepSpeed are imported inside functions only (``driver``, ``loop``, ``state``, ``safe_load``),
so importing this package stays light.
"""
