"""Scoring a model on held-out pairs and tickets (pair metrics, the val-chosen threshold, dense / lexical /
hybrid retrieval) and the figures."""
