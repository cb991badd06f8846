"""Side-by-side benchmark of the fine-tuning job against the v4 notebook approach (`make bench`)."""
