"""Training: the DeepSpeed config, schedule, step, checkpoints and the Ray Train loop
(tracking is in ``vlsa.io.tracking``, the DeepSpeed CPU patch in ``vlsa.model.deepspeed_cpu``).

Only ``vlsa.train.driver``, ``vlsa.train.loop`` and ``vlsa.model.deepspeed_cpu`` touch Ray and DeepSpeed, and they import them
inside functions, so importing this package stays light.
"""
