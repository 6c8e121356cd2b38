"""The ground floor every layer may use: storage (local paths and ``s3://``), tracking (MLflow), LLaVA
record reading and validation, safe image decoding, and the reconstruction grid image."""
