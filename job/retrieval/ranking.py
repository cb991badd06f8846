"""Ranks of each query's relevant tickets under any similarity, in chunks of queries.

A similarity scores some query rows of a corpus against the whole corpus. It is told each query's
candidates (every other ticket, or in time-aware mode only the tickets filed before the query) so
that a score built from statistics over the candidates (BM25's, a fusion's normalisation) uses
those alone. Memory is chunk_size x corpus, never corpus x corpus.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# (query rows, their candidates as a boolean len(rows) x corpus mask, time-aware?) -> len(rows) x corpus
# scores; only candidate cells are read.
Similarity = Callable[[list[int], np.ndarray, bool], np.ndarray]


def cosine_rows(vectors: np.ndarray) -> Similarity:
    """Cosine similarity of some rows of a unit-length corpus to the whole corpus."""
    return lambda rows, candidates, time_aware: vectors[rows] @ vectors.T


def matrix_rows(matrix: np.ndarray) -> Similarity:
    """A similarity given as a full matrix (small corpora, benchmarks)."""
    return lambda rows, candidates, time_aware: matrix[rows]


def candidate_mask(chunk: list[int], n: int, created: np.ndarray | None) -> np.ndarray:
    """Which items each query may be matched with: never itself; with `created`, only items filed before
    it."""
    mask = np.ones((len(chunk), n), dtype=bool)
    mask[np.arange(len(chunk)), chunk] = False
    if created is not None:
        mask &= created[None, :] < created[chunk][:, None]
    return mask


def ranks_in_chunk(
    scores: np.ndarray, mask: np.ndarray, chunk: list[int], relevant: list[set[int]]
) -> list[np.ndarray]:
    """Sorted 1-based ranks of each query's relevant candidates. Ties never help a rank: a relevant item tied
    with irrelevant candidates ranks below all of them (a model scoring every candidate alike, or BM25 scoring
    0 for a query sharing no word, finds nothing), and the i-th best relevant item ranks after the i - 1
    before it: rank_i = i + the irrelevant candidates scoring at least as high."""
    scores = np.where(mask, scores, -np.inf)
    out = []
    for offset, q in enumerate(chunk):
        hits = [r for r in relevant[q] if mask[offset, r]]
        found = np.sort(scores[offset, hits])[::-1]
        irrelevant = np.ones(scores.shape[1], dtype=bool)
        irrelevant[hits] = False
        others = np.sort(scores[offset, irrelevant & mask[offset]])
        at_least = len(others) - np.searchsorted(others, found, side="left")
        out.append((np.arange(1, len(found) + 1) + at_least).astype(np.int64))
    return out


def ranks_of_relevant(
    similarity: Similarity,
    relevant: list[set[int]],
    rows: list[int],
    created: np.ndarray | None = None,
    chunk_size: int = 1024,
) -> list[np.ndarray]:
    """Sorted ranks of every relevant item of each query row in `rows` (see ranks_in_chunk).

    With `created` (one timestamp per item), a query is ranked only against items created before it,
    as a tracker suggests duplicates for a new report; relevant items created later drop out."""
    n = len(relevant)
    out: list[np.ndarray] = []
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        mask = candidate_mask(chunk, n, created)
        scores = np.array(similarity(chunk, mask, created is not None), dtype=np.float64)
        out += ranks_in_chunk(scores, mask, chunk, relevant)
    return out


RECALL_AT = (1, 5, 10, 20)


def ranking_metrics(ranks: list[np.ndarray], prefix: str = "") -> dict[str, float | int | None]:
    """recall@k, MRR and MAP from each query's sorted ranks of its relevant items."""
    ranks = [r for r in ranks if len(r)]
    if not ranks:
        return {
            **{f"{prefix}recall_at_{k}": None for k in RECALL_AT},
            f"{prefix}mrr": None,
            f"{prefix}map": None,
            f"{prefix}n_queries": 0,
        }
    first = np.array([r[0] for r in ranks])
    average_precision = [float(np.mean(np.arange(1, len(r) + 1) / r)) for r in ranks]
    return {
        **{f"{prefix}recall_at_{k}": float(np.mean(first <= k)) for k in RECALL_AT},
        f"{prefix}mrr": float(np.mean(1.0 / first)),
        f"{prefix}map": float(np.mean(average_precision)),
        f"{prefix}n_queries": len(ranks),
    }
