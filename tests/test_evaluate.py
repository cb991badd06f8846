"""Evaluation maths: chunked top-k equals brute force, ranks, thresholds chosen on val."""

from __future__ import annotations

import numpy as np
import pytest

from job.data.pairs import Pair
from job.data.records import Link
from job.evaluation.evaluate import (
    Embeddings,
    PairScores,
    best_threshold,
    evaluate_model,
    pair_metrics,
    ranking_metrics,
    retrieval_metrics,
    retrieval_queries,
)
from job.retrieval.neighbors import top_k
from job.retrieval.ranking import cosine_rows, ranks_of_relevant


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


def test_ranks_of_relevant_count_items_scoring_above_each_relevant_one() -> None:
    rng = np.random.default_rng(1)
    x = _unit(rng, 40)
    relevant = [{(i + 1) % 40, (i + 5) % 40} for i in range(40)]
    ranks = ranks_of_relevant(cosine_rows(x), relevant, list(range(40)), chunk_size=7)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    for i in range(40):
        expected = sorted(1 + int(np.sum(full[i] > full[i, r])) for r in relevant[i])
        assert ranks[i].tolist() == expected


def test_map_and_recall_from_ranks() -> None:
    # Query 1: relevant at ranks 1 and 4 -> AP (1/1 + 2/4) / 2 = 0.75; query 2: first hit at rank 12.
    metrics = ranking_metrics([np.array([1, 4]), np.array([12])])
    assert metrics["map"] == (0.75 + 1 / 12) / 2
    assert metrics["mrr"] == (1 + 1 / 12) / 2
    assert metrics["recall_at_1"] == 0.5 and metrics["recall_at_10"] == 0.5 and metrics["recall_at_20"] == 1.0
    assert metrics["n_queries"] == 2


def test_time_aware_retrieval_ranks_only_against_earlier_tickets() -> None:
    # q duplicates the older d; the distractor x is closer to both than they are to each other,
    # but x was filed after q, so a tracker could not have suggested it for q: pool rank 2,
    # time-aware rank 1. d's only duplicate (q) came later, so d is no time-aware query; the
    # undated `late` is never a candidate.
    vectors = np.array([[1, 0, 0], [0.8, 0.6, 0], [0.95, 0.31, 0], [0, 0, 1]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = ["q", "d", "x", "late"]
    relevant = [{1}, {0}, set(), set()]
    created = np.array([10.0, 5.0, 20.0, np.nan])
    metrics = retrieval_metrics(Embeddings(ids, vectors), ids, relevant, chunk_size=2, created=created)
    assert metrics["recall_at_1"] == 0.0 and metrics["recall_at_5"] == 1.0 and metrics["n_queries"] == 2
    assert metrics["time_aware_n_queries"] == 1  # only q: d's duplicate came later
    assert metrics["time_aware_recall_at_1"] == 1.0 and metrics["time_aware_map"] == 1.0


def test_threshold_is_chosen_on_val_and_applied_to_test() -> None:
    val = PairScores(np.array([0.9, 0.8, 0.3, 0.2]), np.array([1.0, 1.0, 0.0, 0.0]), np.array([1, 1, 0, 0]))
    threshold = best_threshold(val)
    assert 0.3 < threshold <= 0.8
    test = PairScores(
        np.array([0.85, 0.25, 0.75, 0.1]), np.array([1.0, 1.0, 0.0, 0.0]), np.array([1, 1, 0, 0])
    )
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
    pairs = [
        Pair("a0", "a1", 1.0, "positive"),
        Pair("b0", "b1", 1.0, "positive"),
        Pair("a0", "c", 0.0, "random"),
        Pair("b0", "c", 0.0, "random"),
    ]
    result = evaluate_model(emb, pairs, pairs, ids, links, ["duplicate"], 0.5, chunk_size=2)
    assert result.metrics["recall_at_1"] == 1.0 and result.metrics["mrr"] == 1.0
    assert result.metrics["n_queries"] == 4 and result.metrics["average_precision"] == 1.0


def test_retrieval_falls_back_to_all_relations_when_none_requested_exist() -> None:
    relevant, used = retrieval_queries(["x", "y"], [Link("x", "y", "relates")], ["duplicate"])
    assert used == "all" and relevant == [{1}, {0}]


def _pair_world(
    cosines: list[float], labels: list[int], prefix: str
) -> tuple[list[str], np.ndarray, list[Pair]]:
    """Two tickets per pair whose cosine is exactly the given one (2-d unit vectors)."""
    ids, vectors, pairs = [], [], []
    for n, (c, label) in enumerate(zip(cosines, labels, strict=True)):
        a, b = f"{prefix}{n}a", f"{prefix}{n}b"
        ids += [a, b]
        vectors += [[1.0, 0.0], [c, float(np.sqrt(1 - c * c))]]
        pairs.append(Pair(a, b, float(label), "positive" if label else "random"))
    return ids, np.array(vectors, dtype=np.float32), pairs


def test_the_evaluation_reads_its_threshold_from_val_pairs_never_from_test(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wiring, not only the maths: val is best cut at 0.31, test at 0.71, and score_model reports the val
    one; every threshold it picks (dense, hybrid) is picked from val's pairs (4 of them; test has 6)."""
    import job.evaluation.evaluate
    from job.evaluation.evaluate import HeldOut, RetrievalPool, pair_scores, score_model
    from job.retrieval.fusion import FusionSettings
    from job.retrieval.lexical import LexicalSettings

    val_ids, val_vectors, val_pairs = _pair_world([0.6, 0.6, 0.3, 0.3], [1, 1, 0, 0], "v")
    test_ids, test_vectors, test_pairs = _pair_world([0.9, 0.9, 0.7, 0.7, 0.7, 0.2], [1, 1, 0, 0, 0, 0], "t")
    emb = Embeddings(val_ids + test_ids, np.vstack([val_vectors, test_vectors]))
    assert (
        best_threshold(pair_scores(emb, val_pairs, 0.5))
        < 0.5
        < best_threshold(pair_scores(emb, test_pairs, 0.5))
    )

    def pool(ids: list[str], pairs: list[Pair]) -> RetrievalPool:
        links = [Link(p.a, p.b, "duplicate") for p in pairs if p.score]
        return RetrievalPool.build(
            ids, [f"ticket {t}" for t in ids], links, ["duplicate"], dict.fromkeys(ids), LexicalSettings()
        )

    held = HeldOut(val_pairs, test_pairs, pool(val_ids, val_pairs), pool(test_ids, test_pairs))
    chosen_from: list[int] = []

    def spy(scores: PairScores) -> float:
        chosen_from.append(len(scores.label))
        return best_threshold(scores)

    monkeypatch.setattr(job.evaluation.evaluate, "best_threshold", spy)
    metrics = score_model(emb, held, FusionSettings(weight=0.0)).metrics
    assert metrics["threshold"] == best_threshold(pair_scores(emb, val_pairs, 0.5))
    assert chosen_from == [len(val_pairs)] * 2, "dense and hybrid thresholds, both from val"
