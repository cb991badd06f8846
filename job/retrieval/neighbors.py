"""Nearest neighbours by cosine similarity, computed in chunks of queries.

Never builds the full n x n similarity matrix: memory is chunk_size x n, so hard-negative
mining grows linearly with the number of tickets (ranking for evaluation: job/retrieval/ranking.py).
"""

from __future__ import annotations

import numpy as np


def top_k(
    queries: np.ndarray, corpus: np.ndarray, k: int, chunk_size: int = 1024, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, similarities), each (len(queries), k), best first. Inputs must be unit-length.

    With `exclude_self`, queries and corpus are the same set and row i never returns i.
    """
    k = min(k, corpus.shape[0] - (1 if exclude_self else 0))
    n = queries.shape[0]
    indices = np.empty((n, max(k, 0)), dtype=np.int64)
    scores = np.empty((n, max(k, 0)), dtype=np.float32)
    if k <= 0:
        return indices, scores
    for start in range(0, n, chunk_size):
        sims = queries[start : start + chunk_size] @ corpus.T
        if exclude_self:
            rows = np.arange(sims.shape[0])
            sims[rows, rows + start] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        indices[start : start + chunk_size] = np.take_along_axis(part, order, axis=1)
        scores[start : start + chunk_size] = np.take_along_axis(part_scores, order, axis=1)
    return indices, scores
