"""Score a model on held-out pairs and on retrieval, from embeddings computed once per ticket.

Pair metrics: Pearson/Spearman of cosine vs target score, ROC-AUC and average precision of
cosine for positive vs negative, and F1 at a threshold chosen on val (0.01 grid) and reported
on test. Retrieval: every test ticket with a link of `retrieval_relations` is a query ranked
against all other test tickets; recall@1/5/10 and MRR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from job.data import Link
from job.neighbors import rank_of_first_hit
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


def retrieval_metrics(emb: Embeddings, test_ids: list[str], relevant: list[set[int]],
                      chunk_size: int) -> dict[str, float | int | None]:
    rows = [i for i, rel in enumerate(relevant) if rel]
    if not rows:
        return {"recall_at_1": None, "recall_at_5": None, "recall_at_10": None, "mrr": None, "n_queries": 0}
    vectors = emb.of(test_ids)
    ranks = rank_of_first_hit(vectors, vectors, relevant, rows, chunk_size)
    return {
        "recall_at_1": float(np.mean(ranks <= 1)),
        "recall_at_5": float(np.mean(ranks <= 5)),
        "recall_at_10": float(np.mean(ranks <= 10)),
        "mrr": float(np.mean(1.0 / ranks)),
        "n_queries": len(rows),
    }


@dataclass
class ModelEvaluation:
    metrics: dict[str, float | int | None | str]
    val: PairScores
    test: PairScores


def evaluate_model(emb: Embeddings, val_pairs: list[Pair], test_pairs: list[Pair], test_ids: list[str],
                   links: list[Link], relations: list[str], positive_threshold: float,
                   chunk_size: int) -> ModelEvaluation:
    """All metrics for one model; the F1 threshold comes from val and is applied to test."""
    val = pair_scores(emb, val_pairs, positive_threshold)
    test = pair_scores(emb, test_pairs, positive_threshold)
    metrics: dict[str, float | int | None | str] = dict(pair_metrics(test, best_threshold(val)))
    relevant, used = retrieval_queries(test_ids, links, relations)
    metrics.update(retrieval_metrics(emb, test_ids, relevant, chunk_size))
    metrics["retrieval_relations"] = used
    return ModelEvaluation(metrics, val, test)
