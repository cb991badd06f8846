"""Nearest neighbours by cosine similarity, computed in chunks of queries.

Never builds the full n x n similarity matrix: memory is chunk_size x n, so retrieval
evaluation and hard-negative mining grow linearly with the number of tickets.
"""

from __future__ import annotations

from collections.abc import Callable

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


SimilarityRows = Callable[[list[int]], np.ndarray]


def cosine_rows(vectors: np.ndarray) -> SimilarityRows:
    """Similarity of some rows of a unit-length corpus to the whole corpus."""
    return lambda rows: vectors[rows] @ vectors.T


def ranks_of_relevant(similarity: SimilarityRows, relevant: list[set[int]], rows: list[int],
                      created: np.ndarray | None = None, chunk_size: int = 1024) -> list[np.ndarray]:
    """Sorted 1-based ranks of every relevant item of each query row in `rows`.

    Queries are items of the corpus themselves (never their own hit); `similarity(chunk)` gives
    their scores against the whole corpus (cosine, or any other score such as BM25). With
    `created` (one timestamp per item), a query is ranked only against items created before it,
    as a tracker suggests duplicates for a new report; relevant items created later drop out.
    A rank is 1 + the number of candidates scoring above that item, so ties do not help.
    Memory is chunk_size x corpus, never corpus x corpus.
    """
    out: list[np.ndarray] = []
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        sims = np.array(similarity(chunk), dtype=np.float64)
        sims[np.arange(len(chunk)), chunk] = -np.inf
        if created is not None:
            sims[created[None, :] >= created[chunk][:, None]] = -np.inf
        for offset, q in enumerate(chunk):
            hits = [r for r in relevant[q] if np.isfinite(sims[offset, r])]
            scores = np.sort(sims[offset, hits])[::-1]
            out.append(np.array([1 + int(np.count_nonzero(sims[offset] > s)) for s in scores], dtype=np.int64))
    return out
