"""Training data: chat templates, cognition-alignment augmentation, sample assembly, batching and the
generated demo dataset. LLaVA record reading and safe image decoding are below it, in ``vlsa.io``."""
