"""Score a model on held-out pairs and on retrieval, from embeddings computed once per ticket.

Pair metrics: Pearson/Spearman of cosine vs target score, ROC-AUC and average precision of
cosine for positive vs negative, and F1 at a threshold chosen on val (0.01 grid) and reported
on test. Retrieval, scored as duplicate detection is scored:
- pool: every test ticket with a link of `retrieval_relations` is a query ranked against all
  other test tickets;
- time-aware (`time_aware_*`): each query is ranked only against test tickets created before
  it, and counts only if one of its duplicates was created before it: how a tracker suggests
  duplicates for a report as it is filed (Zhang et al., TOSEM 2023).
Both report recall@1/5/10/20 (a relevant ticket in the top k), MRR (first relevant) and MAP
(mean average precision over all relevant tickets of a query).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from job.data import Link
from job.neighbors import SimilarityRows, cosine_rows, ranks_of_relevant
from job.pairs import Pair

THRESHOLD_GRID = np.round(np.arange(-1.0, 1.0001, 0.01), 2)


@dataclass
class Embeddings:
    """Unit-length vectors for a set of ticket ids."""

    ids: list[str]
    vectors: np.ndarray

    def __post_init__(self) -> None:
        self.index = {tid: i for i, tid in enumerate(self.ids)}

    def of(self, ids: list[str]) -> np.ndarray:
        return self.vectors[[self.index[t] for t in ids]]

    def cosine(self, pairs: list[Pair]) -> np.ndarray:
        a, b = self.of([p.a for p in pairs]), self.of([p.b for p in pairs])
        return np.einsum("ij,ij->i", a, b)


@dataclass
class PairScores:
    cosine: np.ndarray
    target: np.ndarray
    label: np.ndarray


def pair_scores(emb: Embeddings, pairs: list[Pair], positive_threshold: float) -> PairScores:
    target = np.array([p.score for p in pairs], dtype=np.float64)
    return PairScores(emb.cosine(pairs).astype(np.float64), target, (target >= positive_threshold).astype(int))


def f1_curve(scores: PairScores) -> np.ndarray:
    """F1 at every threshold of the grid."""
    return np.array([f1_score(scores.label, scores.cosine >= t, zero_division=0) for t in THRESHOLD_GRID])


def best_threshold(val: PairScores) -> float:
    curve = f1_curve(val)
    return float(THRESHOLD_GRID[int(np.argmax(curve))])


def pair_metrics(test: PairScores, threshold: float) -> dict[str, float | None]:
    both_classes = len(set(test.label.tolist())) == 2
    varied = np.std(test.target) > 0 and np.std(test.cosine) > 0
    return {
        "pearson": float(pearsonr(test.cosine, test.target)[0]) if varied else None,
        "spearman": float(spearmanr(test.cosine, test.target)[0]) if varied else None,
        "roc_auc": float(roc_auc_score(test.label, test.cosine)) if both_classes else None,
        "average_precision": float(average_precision_score(test.label, test.cosine)) if both_classes else None,
        "best_f1": float(f1_score(test.label, test.cosine >= threshold, zero_division=0)),
        "threshold": threshold,
        "n_pairs": len(test.label),
        "n_positive": int(test.label.sum()),
    }


def retrieval_queries(test_ids: list[str], links: list[Link], relations: list[str]) -> tuple[list[set[int]], str]:
    """Relevant corpus rows per test ticket. Falls back to every relation when none of
    `relations` has a link inside the test split (reported in the metrics)."""
    index = {tid: i for i, tid in enumerate(test_ids)}
    inside = [link for link in links if link.source in index and link.target in index]
    chosen = [link for link in inside if link.relation in relations]
    used = ",".join(relations)
    if not chosen:
        chosen, used = inside, "all"
    relevant: list[set[int]] = [set() for _ in test_ids]
    for link in chosen:
        relevant[index[link.source]].add(index[link.target])
        relevant[index[link.target]].add(index[link.source])
    return relevant, used


RECALL_AT = (1, 5, 10, 20)


def ranking_metrics(ranks: list[np.ndarray], prefix: str = "") -> dict[str, float | int | None]:
    """recall@k, MRR and MAP from each query's sorted ranks of its relevant items."""
    ranks = [r for r in ranks if len(r)]
    if not ranks:
        return {**{f"{prefix}recall_at_{k}": None for k in RECALL_AT}, f"{prefix}mrr": None, f"{prefix}map": None,
                f"{prefix}n_queries": 0}
    first = np.array([r[0] for r in ranks])
    average_precision = [float(np.mean(np.arange(1, len(r) + 1) / r)) for r in ranks]
    return {
        **{f"{prefix}recall_at_{k}": float(np.mean(first <= k)) for k in RECALL_AT},
        f"{prefix}mrr": float(np.mean(1.0 / first)),
        f"{prefix}map": float(np.mean(average_precision)),
        f"{prefix}n_queries": len(ranks),
    }


def created_timestamps(ids: list[str], created: dict[str, str | None]) -> np.ndarray | None:
    """Seconds since the epoch per id (NaN where unknown); None when no id has a date."""
    values = np.array([_timestamp(created.get(t)) for t in ids], dtype=np.float64)
    return None if np.all(np.isnan(values)) else values


def _timestamp(value: str | None) -> float:
    if not value:
        return float("nan")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("nan")


def retrieval_metrics(emb: Embeddings, test_ids: list[str], relevant: list[set[int]], chunk_size: int,
                      created: np.ndarray | None = None) -> dict[str, float | int | None]:
    """Pool retrieval metrics by cosine, and time-aware ones when creation dates are known."""
    return scored_retrieval_metrics(cosine_rows(emb.of(test_ids)), relevant, chunk_size, created)


def scored_retrieval_metrics(similarity: SimilarityRows, relevant: list[set[int]], chunk_size: int,
                             created: np.ndarray | None = None) -> dict[str, float | int | None]:
    """The same metrics for any similarity (the benchmark's BM25 uses it too)."""
    rows = [i for i, rel in enumerate(relevant) if rel]
    metrics = ranking_metrics(ranks_of_relevant(similarity, relevant, rows, None, chunk_size))
    if created is not None:
        # An undated ticket is never a query, and (dated +inf) never a candidate.
        dated = [i for i in rows if not np.isnan(created[i])]
        latest = np.where(np.isnan(created), np.inf, created)
        metrics.update(ranking_metrics(ranks_of_relevant(similarity, relevant, dated, latest, chunk_size),
                                       "time_aware_"))
    return metrics


@dataclass
class ModelEvaluation:
    metrics: dict[str, float | int | None | str]
    val: PairScores
    test: PairScores


def evaluate_model(emb: Embeddings, val_pairs: list[Pair], test_pairs: list[Pair], test_ids: list[str],
                   links: list[Link], relations: list[str], positive_threshold: float,
                   chunk_size: int, created: dict[str, str | None] | None = None) -> ModelEvaluation:
    """All metrics for one model; the F1 threshold comes from val and is applied to test."""
    val = pair_scores(emb, val_pairs, positive_threshold)
    test = pair_scores(emb, test_pairs, positive_threshold)
    metrics: dict[str, float | int | None | str] = dict(pair_metrics(test, best_threshold(val)))
    relevant, used = retrieval_queries(test_ids, links, relations)
    timestamps = created_timestamps(test_ids, created) if created else None
    metrics.update(retrieval_metrics(emb, test_ids, relevant, chunk_size, timestamps))
    metrics["retrieval_relations"] = used
    return ModelEvaluation(metrics, val, test)
