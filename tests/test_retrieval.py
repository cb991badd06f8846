"""Hybrid retrieval: BM25 as Lucene computes it, the fusion of a search engine's hybrid query, the lexical
weight chosen on val, and time-aware queries that never see a later ticket in either score."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from job.data.pairs import Pair
from job.data.records import Link
from job.evaluation.evaluate import Embeddings, HeldOut, RetrievalPool, score_model, scored_retrieval_metrics
from job.retrieval.fusion import Fusion, FusionSettings, choose_weight, hybrid_rows, minmax
from job.retrieval.lexical import LexicalIndex, LexicalSettings
from job.retrieval.ranking import candidate_mask, cosine_rows, ranks_of_relevant

STOP = {"the", "a", "is", "on", "of", "and", "to", "in", "with", "not", "it"}
TEXTS = [
    "The NameNode crashes on startup with a NullPointerException",
    "NameNode startup fails: NullPointerException in FSImage loading",
    "DataNode disk is full and the block report is slow",
    "Block report of the DataNode takes minutes on a full disk",
    "Update the documentation of dfs.namenode.name.dir",
]


def _hand_tokens(text: str) -> list[str]:
    """Lower-cased runs of 2+ word characters, English stop words dropped (the tokenizer's documented
    rule)."""
    import re

    return [t for t in re.findall(r"\w\w+", text.lower()) if t not in STOP]


def _hand_bm25(query: list[str], docs: list[list[str]], k1: float, b: float) -> np.ndarray:
    """Okapi BM25, Lucene's variant: idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
    tf / (tf + k1 (1 - b + b dl/avgdl))."""
    n, avgdl = len(docs), sum(map(len, docs)) / len(docs)
    df = Counter(t for d in docs for t in set(d))
    out = np.zeros(n)
    for i, doc in enumerate(docs):
        tf = Counter(doc)
        for term in query:
            if tf[term]:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                out[i] += idf * tf[term] / (tf[term] + k1 * (1 - b + b * len(doc) / avgdl))
    return out


@pytest.mark.parametrize(("k1", "b"), [(1.2, 0.75), (0.9, 0.4)])
def test_lexical_scores_are_okapi_bm25_computed_by_hand(k1: float, b: float) -> None:
    index = LexicalIndex(TEXTS, LexicalSettings(k1=k1, b=b))
    docs = [_hand_tokens(t) for t in TEXTS]
    assert docs[4] == ["update", "documentation", "dfs", "namenode", "name", "dir"]  # split at punctuation
    rows = index.rows(list(range(len(TEXTS))))
    for q in range(len(TEXTS)):
        assert np.allclose(rows[q], _hand_bm25(docs[q], docs, k1, b), rtol=1e-5), q
    # a new text: its words as the index knows them, unknown words score nothing
    assert np.allclose(
        index.scores(index.query_ids("namenode NullPointerException zzzunknown")),
        _hand_bm25(["namenode", "nullpointerexception"], docs, k1, b),
        rtol=1e-5,
    )


def test_time_aware_lexical_statistics_come_from_earlier_tickets_only() -> None:
    index = LexicalIndex(TEXTS)
    earlier = np.array([[True, True, True, False, False]])  # the query (row 3) was filed after tickets 0-2
    row = index.rows([3], earlier)[0]
    docs = [_hand_tokens(t) for t in TEXTS[:3]]
    assert np.allclose(row[:3], _hand_bm25(_hand_tokens(TEXTS[3]), docs, 1.2, 0.75), rtol=1e-5)
    assert np.all(np.isneginf(row[3:]))
    # a later ticket full of the query's words changes nothing the query sees
    changed = LexicalIndex([*TEXTS[:4], TEXTS[3] + " datanode block report"])
    assert np.array_equal(changed.rows([3], earlier)[0][:3], row[:3])


def _later_world(extra_later: str = "") -> tuple[RetrievalPool, np.ndarray]:
    texts = [
        "disk full on datanode",
        "datanode disk is full",
        "namenode heap exhausted",
        "namenode out of heap",
        "datanode disk full again" + extra_later,
    ]
    links = [Link("d1", "d0", "duplicate"), Link("n1", "n0", "duplicate")]
    ids = ["d0", "d1", "n0", "n1", "late"]
    created = {
        "d0": "2020-01-01",
        "d1": "2020-02-01",
        "n0": "2020-03-01",
        "n1": "2020-04-01",
        "late": "2021-01-01",
    }
    pool = RetrievalPool.build(ids, texts, links, ["duplicate"], created, LexicalSettings())
    vectors = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 1]] + 0.1
    vectors[3, 2] += 0.5  # n1 leans towards n0, so no tie decides its rank
    return pool, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_a_time_aware_query_never_sees_a_later_ticket_in_either_score() -> None:
    pool, vectors = _later_world()
    changed, _ = _later_world(" heap exhausted namenode out of heap namenode")
    seen = []
    for world in (pool, changed):
        hybrid = hybrid_rows(cosine_rows(vectors), world.lexical_rows, Fusion("minmax", 0.5))
        mask = candidate_mask([1, 3], 5, world.created)
        assert not mask[:, 4].any(), "the later ticket is never a candidate"
        seen.append((world.lexical_rows([1, 3], mask, True), hybrid([1, 3], mask, True), mask))
        metrics = scored_retrieval_metrics(hybrid, world.relevant, 2, world.created)
        assert metrics["time_aware_recall_at_1"] == 1.0
    (lex_a, hyb_a, mask), (lex_b, hyb_b, _) = seen
    assert np.array_equal(lex_a[mask], lex_b[mask]) and np.array_equal(hyb_a[mask], hyb_b[mask])
    # the same query in pool mode does see the later ticket (and its words shape the statistics)
    pool_mode = pool.lexical_rows([3], candidate_mask([3], 5, None), False)
    assert np.isfinite(pool_mode[0, 4])


def test_minmax_normalises_over_the_candidates_only() -> None:
    scores = np.array([[10.0, 2.0, 4.0, 6.0]])
    mask = np.array([[False, True, True, True]])  # the query itself (10.0) is no candidate
    assert np.allclose(minmax(scores, mask)[0, 1:], [0.0, 0.5, 1.0])
    assert np.all(minmax(np.array([[3.0, 3.0]]), np.array([[True, True]])) == 0.0)  # all tied: no signal


def test_hybrid_ranks_follow_the_weighted_sum_and_ties_never_help() -> None:
    dense = np.array([[1.0, 0.9, 0.1, 0.5]])
    lexical = np.array([[9.0, 0.0, 8.0, 4.0]])
    mask = candidate_mask([0], 4, None)
    fused = Fusion("minmax", 0.5)(dense, lexical, mask)[0]
    assert np.allclose(fused[1:], [0.5 * 1.0 + 0.5 * 0.0, 0.5 * 0.0 + 0.5 * 1.0, 0.5 * 0.5 + 0.5 * 0.5])
    relevant = [{1}, set(), set(), set()]
    ranks = ranks_of_relevant(lambda rows, m, t: Fusion("minmax", 0.5)(dense, lexical, m), relevant, [0])
    assert ranks[0].tolist() == [3]  # tied with tickets 2 and 3 at 0.5: ties never help, it ranks below both
    rrf = Fusion("rrf", 0.5, rrf_k=60)(dense, lexical, mask)[0]
    assert np.allclose(rrf[1:], [0.5 / 61 + 0.5 / 63, 0.5 / 63 + 0.5 / 61, 0.5 / 62 + 0.5 / 62])


def _split_world(
    lexical_helps: bool, offset: int
) -> tuple[list[str], list[str], np.ndarray, list[Link], list[Pair]]:
    """Six pairs of duplicates. Where the keywords help, their words match within a pair and their vectors are
    noise; elsewhere the vectors match within a pair and the words match a wrong partner."""
    ids, texts, vectors, links, pairs = [], [], [], [], []
    rng = np.random.default_rng(offset)
    for k in range(6):
        a, b = f"t{offset + 2 * k}", f"t{offset + 2 * k + 1}"
        word, other = f"word{offset + k}", f"word{offset + (k + 1) % 6}"
        direction = rng.normal(size=8)
        noisy = rng.normal(size=8) if lexical_helps else direction + rng.normal(scale=0.3, size=8)
        ids += [a, b]
        texts += [f"{word} failure", f"{word if lexical_helps else other} failure"]
        vectors += [direction, noisy]
        links.append(Link(b, a, "duplicate"))
        pairs.append(Pair(a, b, 1.0, "positive", "duplicate"))
    matrix = np.array(vectors, dtype=np.float32)
    return ids, texts, matrix / np.linalg.norm(matrix, axis=1, keepdims=True), links, pairs


def test_the_lexical_weight_is_chosen_on_val_never_on_test() -> None:
    # On val the keywords mislead; on test they are exact. A weight chosen on test would be high.
    val_ids, val_texts, val_vectors, val_links, val_pairs = _split_world(lexical_helps=False, offset=0)
    test_ids, test_texts, test_vectors, test_links, test_pairs = _split_world(lexical_helps=True, offset=100)
    created = dict.fromkeys(val_ids + test_ids, None)
    held = HeldOut(
        val_pairs,
        test_pairs,
        RetrievalPool.build(val_ids, val_texts, val_links, ["duplicate"], created, LexicalSettings()),
        RetrievalPool.build(test_ids, test_texts, test_links, ["duplicate"], created, LexicalSettings()),
    )
    emb = Embeddings(val_ids + test_ids, np.vstack([val_vectors, test_vectors]))
    result = score_model(emb, held, FusionSettings())
    on_val = choose_weight(
        cosine_rows(val_vectors),
        held.val.lexical_rows,
        held.val.relevant,
        list(FusionSettings().grid),
        "minmax",
        60,
    )
    on_test = choose_weight(
        cosine_rows(test_vectors),
        held.test.lexical_rows,
        held.test.relevant,
        list(FusionSettings().grid),
        "minmax",
        60,
    )
    assert on_test.weight > on_val.weight, "the fixture makes the two splits disagree"
    assert result.metrics["hybrid_weight"] == on_val.weight
    assert result.fusion["chosen_on"] == "val" and result.fusion["val_curve"] == on_val.curve
    # a fixed weight in the config is used as it is
    assert score_model(emb, held, FusionSettings(weight=0.8)).metrics["hybrid_weight"] == 0.8


def test_ties_never_help_a_rank() -> None:
    """A model scoring every candidate alike finds nothing (each relevant item ranks below every irrelevant
    one it ties with), and relevant items tied with each other take consecutive ranks."""
    from job.retrieval.ranking import matrix_rows

    flat = np.zeros((4, 4))
    assert ranks_of_relevant(matrix_rows(flat), [{1}, set(), set(), set()], [0])[0].tolist() == [3]
    assert ranks_of_relevant(matrix_rows(flat), [{1, 2}, set(), set(), set()], [0])[0].tolist() == [2, 3]
    scores = np.array([[0.0, 0.9, 0.5, 0.5, 0.1]])  # relevant: 2 (tied with 3) and 4
    assert ranks_of_relevant(matrix_rows(scores), [{2, 4}] + [set()] * 4, [0])[0].tolist() == [3, 4]


def test_suggest_top_k_is_a_stable_sort_of_the_best_scores() -> None:
    """The partial sort suggest uses returns exactly what a full stable sort would: best first, ties by row
    (many ties and excluded candidates at -inf on purpose)."""
    from job.suggest import top_k

    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(1, 40))
        scores = rng.integers(0, 4, n).astype(float)
        scores[rng.random(n) < 0.2] = -np.inf
        k = int(rng.integers(1, n + 1))
        assert top_k(scores, k).tolist() == np.argsort(-scores, kind="stable")[:k].tolist()
