"""Hybrid retrieval: the model's cosine and BM25 fused per query, the way search engines run a hybrid query.

`minmax` (the default): each query's dense scores and its lexical scores are min-max normalised over
that query's candidates, then added with weights 1 - w and w. OpenSearch's normalization processor
(`min_max`, `arithmetic_mean` with weights) and Elasticsearch's `linear` retriever (normalizer `minmax`)
compute the same. `rrf`: weighted reciprocal rank fusion, (1 - w) / (k + dense rank) + w / (k + lexical
rank), k = 60 (Cormack, Clarke and Buettcher, SIGIR 2009). The lexical weight w is chosen on val from a
grid (`choose_weight`), never on test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from job.retrieval.ranking import Similarity, candidate_mask, ranking_metrics, ranks_in_chunk


def minmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each row scaled to [0, 1] over its candidates (a row whose candidates all tie scores 0)."""
    low = np.where(mask, scores, np.inf).min(axis=1, keepdims=True)
    high = np.where(mask, scores, -np.inf).max(axis=1, keepdims=True)
    span = high - low
    safe = np.where(np.isfinite(span) & (span > 0), span, 1.0)
    return np.where(mask & (span > 0), (scores - np.where(np.isfinite(low), low, 0.0)) / safe, 0.0)


def reciprocal_ranks(scores: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """1 / (k + rank) of each candidate in its row (tied candidates share the best rank)."""
    ranks = rankdata(-np.where(mask, scores, -np.inf), method="min", axis=1)
    return np.where(mask, 1.0 / (k + ranks), 0.0)


def _minmax_fusion(
    dense: np.ndarray, lexical: np.ndarray, mask: np.ndarray, weight: float, k: int
) -> np.ndarray:
    return (1.0 - weight) * minmax(dense, mask) + weight * minmax(lexical, mask)


def _rrf_fusion(
    dense: np.ndarray, lexical: np.ndarray, mask: np.ndarray, weight: float, k: int
) -> np.ndarray:
    return (1.0 - weight) * reciprocal_ranks(dense, mask, k) + weight * reciprocal_ranks(lexical, mask, k)


# One entry per fusion method: (dense rows, lexical rows, candidates, lexical weight, rrf k) -> fused rows.
FUSIONS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, float, int], np.ndarray]] = {
    "minmax": _minmax_fusion,
    "rrf": _rrf_fusion,
}


@dataclass(frozen=True)
class Fusion:
    """How two scores of a query's candidates become one: `method`, the lexical `weight`, RRF's `rrf_k`."""

    method: str = "minmax"
    weight: float = 0.25
    rrf_k: int = 60

    def __call__(self, dense: np.ndarray, lexical: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return FUSIONS[self.method](dense, lexical, mask, self.weight, self.rrf_k)


@dataclass(frozen=True)
class FusionSettings:
    """`retrieval.fusion`: the method, a fixed lexical weight or None (chosen on val), the grid, RRF's k."""

    method: str = "minmax"
    weight: float | None = None
    grid: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
    rrf_k: int = 60


def hybrid_rows(dense: Similarity, lexical: Similarity, fusion: Fusion) -> Similarity:
    """The fused similarity of two others (each computed over the same candidates)."""

    def rows(chunk: list[int], mask: np.ndarray, time_aware: bool) -> np.ndarray:
        return fusion(dense(chunk, mask, time_aware), lexical(chunk, mask, time_aware), mask)

    return rows


def ranking_score(metrics: dict[str, Any]) -> float | None:
    """What the lexical weight is chosen by: the mean of recall@10 and MRR (the top of the list, and how
    high)."""
    if metrics.get("recall_at_10") is None or metrics.get("mrr") is None:
        return None
    return (metrics["recall_at_10"] + metrics["mrr"]) / 2


@dataclass
class WeightChoice:
    weight: float
    curve: list[dict[str, float | None]] = field(default_factory=list)  # the val score of every grid weight
    n_queries: int = 0


def choose_weight(
    dense: Similarity,
    lexical: Similarity,
    relevant: list[set[int]],
    grid: list[float],
    method: str,
    rrf_k: int,
    chunk_size: int = 1024,
) -> WeightChoice:
    """The grid weight with the best val ranking_score (the lowest of tied ones); each query's two score rows
    are computed once and fused at every weight."""
    rows = [i for i, rel in enumerate(relevant) if rel]
    ranks: dict[float, list[np.ndarray]] = {w: [] for w in grid}
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        mask = candidate_mask(chunk, len(relevant), None)
        d, lex = dense(chunk, mask, False), lexical(chunk, mask, False)
        for weight in grid:
            fused = Fusion(method, weight, rrf_k)(d, lex, mask)
            ranks[weight] += ranks_in_chunk(fused, mask, chunk, relevant)
    curve = [{"weight": w, "score": ranking_score(ranking_metrics(ranks[w]))} for w in grid]
    scored = [point for point in curve if point["score"] is not None]
    if not scored:  # no val query: nothing to choose with, so the middle of the grid's usual optimum
        return WeightChoice(Fusion().weight, curve, 0)
    best = max(scored, key=lambda point: (point["score"], -float(point["weight"] or 0)))
    return WeightChoice(float(best["weight"] or 0.0), curve, len(rows))
