"""Training data: safe image decoding, LLaVA-format readers, chat templates, cognition-alignment
augmentation, sample assembly, batching and the generated demo dataset."""
