"""Training: the DeepSpeed config, schedule, step, checkpoints and the Ray Train loop
(tracking is in ``vlsa.io.tracking``, the DeepSpeed CPU patch in ``vlsa.train.deepspeed_cpu``).

Only ``vlsa.train.driver`` and ``vlsa.train.loop`` touch Ray and DeepSpeed, and they import them
inside functions, so importing this package stays light.
"""
