"""One run's machinery: the step table, the run folder and manifest, fingerprints, the lock, the model card,
step metrics."""
