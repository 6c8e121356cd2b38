"""Training: the DeepSpeed config, schedule, step, checkpoints, tracking and the Ray Train loop.

Only ``vlsa.train.driver`` and ``vlsa.train.loop`` touch Ray and DeepSpeed, and they import them
inside functions, so importing this package stays light.
"""
