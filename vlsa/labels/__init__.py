"""Offline labels for cognition alignment and reconstruction (Sec. 3.2): VQ-VAE codebook indices per
image quarter, pixel targets of X_Lo and cached VAE latents.

``compute`` (the models, plain PyTorch), ``schema`` (stored layout, manifest check), ``shards`` (output
folder), ``worker`` (one shard's work), ``pipeline`` (Ray Data job), ``progress`` (lines, summary,
MLflow), ``store`` (``load_labels`` for training). Nothing here imports Ray at import time.
"""
