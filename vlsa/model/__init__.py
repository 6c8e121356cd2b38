"""Model components: compressive encoding, SA-Perceiver, baselines, Epigone, reconstruction, full VLM."""
