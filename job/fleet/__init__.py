"""Across runs: the promotion gate and pointer, the run history, input drift against the promoted run."""
