"""Export of a trained checkpoint for the tools teams already use: ``python -m vlsa.export``.

``checkpoint``: the inference-only model of a stage-end training checkpoint (no VAE, denoiser, Epigone or VQ-VAE
is built); ``card``: the model card; ``__main__``: the command line (also the body of ``ray_jobs/export.py``).
The folder formats themselves are ``vlsa.model.export`` (and ``vlsa.model.export_hf``).
"""
