"""Evaluation maths: chunked top-k equals brute force, ranks, thresholds chosen on val."""

from __future__ import annotations

import numpy as np

from job.data import Link
from job.evaluate import (
    Embeddings,
    PairScores,
    best_threshold,
    evaluate_model,
    pair_metrics,
    retrieval_queries,
)
from job.neighbors import rank_of_first_hit, top_k
from job.pairs import Pair


def _unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_chunked_top_k_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = _unit(rng, 103)
    idx, sims = top_k(x, x, k=7, chunk_size=10, exclude_self=True)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    expected = np.argsort(-full, axis=1)[:, :7]
    assert np.array_equal(idx, expected)
    assert np.allclose(sims, np.take_along_axis(full, expected, axis=1))


def test_rank_of_first_hit_counts_items_scoring_above() -> None:
    rng = np.random.default_rng(1)
    x = _unit(rng, 40)
    relevant = [{(i + 1) % 40} for i in range(40)]
    ranks = rank_of_first_hit(x, x, relevant, list(range(40)), chunk_size=7)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    expected = [1 + int(np.sum(full[i] > full[i, (i + 1) % 40])) for i in range(40)]
    assert ranks.tolist() == expected


def test_threshold_is_chosen_on_val_and_applied_to_test() -> None:
    val = PairScores(np.array([0.9, 0.8, 0.3, 0.2]), np.array([1.0, 1.0, 0.0, 0.0]), np.array([1, 1, 0, 0]))
    threshold = best_threshold(val)
    assert 0.3 < threshold <= 0.8
    test = PairScores(np.array([0.85, 0.25, 0.75, 0.1]), np.array([1.0, 1.0, 0.0, 0.0]), np.array([1, 1, 0, 0]))
    metrics = pair_metrics(test, threshold)
    assert metrics["threshold"] == threshold
    assert metrics["best_f1"] == 0.5  # one hit, one miss, one false alarm at the val threshold
    assert metrics["roc_auc"] == 0.75


def test_perfect_embeddings_give_perfect_retrieval() -> None:
    # Tickets a0/a1 are duplicates (same vector family), as are b0/b1; c is unrelated.
    vectors = np.array([[1, 0, 0], [0.99, 0.1, 0], [0, 1, 0], [0.1, 0.99, 0], [0, 0, 1]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = ["a0", "a1", "b0", "b1", "c"]
    emb = Embeddings(ids, vectors)
    links = [Link("a1", "a0", "duplicate"), Link("b1", "b0", "duplicate")]
    pairs = [Pair("a0", "a1", 1.0, "positive"), Pair("b0", "b1", 1.0, "positive"), Pair("a0", "c", 0.0, "random"),
             Pair("b0", "c", 0.0, "random")]
    result = evaluate_model(emb, pairs, pairs, ids, links, ["duplicate"], 0.5, chunk_size=2)
    assert result.metrics["recall_at_1"] == 1.0 and result.metrics["mrr"] == 1.0
    assert result.metrics["n_queries"] == 4 and result.metrics["average_precision"] == 1.0


def test_retrieval_falls_back_to_all_relations_when_none_requested_exist() -> None:
    relevant, used = retrieval_queries(["x", "y"], [Link("x", "y", "relates")], ["duplicate"])
    assert used == "all" and relevant == [{1}, {0}]
