"""Nearest neighbours by cosine similarity, computed in chunks of queries.

Never builds the full n x n similarity matrix: memory is chunk_size x n, so retrieval
evaluation and hard-negative mining grow linearly with the number of tickets.
"""

from __future__ import annotations

import numpy as np


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int, chunk_size: int = 1024,
          exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
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


def rank_of_first_hit(queries: np.ndarray, corpus: np.ndarray, relevant: list[set[int]],
                      rows: list[int], chunk_size: int = 1024) -> np.ndarray:
    """1-based rank of the best-ranked relevant corpus item for each query row in `rows`.

    `queries` and `corpus` are the same set (row i is corpus item i, which is never its own hit).
    The rank is 1 + the number of items scoring above the best relevant one, so ties do not help.
    """
    ranks = np.empty(len(rows), dtype=np.int64)
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        sims = queries[chunk] @ corpus.T
        sims[np.arange(len(chunk)), chunk] = -np.inf
        for offset, q in enumerate(chunk):
            best = sims[offset, list(relevant[q])].max()
            ranks[start + offset] = 1 + int(np.count_nonzero(sims[offset] > best))
    return ranks
