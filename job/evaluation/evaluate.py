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

Each model is scored three ways (`score_model`): dense (its cosine), lexical (BM25 alone, the same
for every model) and hybrid (both fused per query, job/retrieval/fusion.py, with the lexical weight
chosen on val retrieval). Hybrid keys carry the prefix `hybrid_`; the lexical ones sit in their own
section of metrics.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from job.data.pairs import Pair
from job.data.records import Link
from job.retrieval.fusion import Fusion, FusionSettings, WeightChoice, choose_weight, hybrid_rows, minmax
from job.retrieval.lexical import LexicalIndex, LexicalSettings
from job.retrieval.ranking import RECALL_AT, Similarity, cosine_rows, ranking_metrics, ranks_of_relevant

THRESHOLD_GRID = np.round(np.arange(-1.0, 1.0001, 0.01), 2)
__all__ = [
    "RECALL_AT",
    "ranking_metrics",
]  # re-exported: callers scored ranks from here before job/retrieval/


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
    cosine: np.ndarray  # the pair score: the cosine, or another score on a threshold grid in [-1, 1]
    target: np.ndarray
    label: np.ndarray


def pair_scores(emb: Embeddings, pairs: list[Pair], positive_threshold: float) -> PairScores:
    return labelled(emb.cosine(pairs), pairs, positive_threshold)


def labelled(scores: np.ndarray, pairs: list[Pair], positive_threshold: float) -> PairScores:
    target = np.array([p.score for p in pairs], dtype=np.float64)
    return PairScores(
        np.asarray(scores, dtype=np.float64), target, (target >= positive_threshold).astype(int)
    )


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
        "average_precision": float(average_precision_score(test.label, test.cosine))
        if both_classes
        else None,
        "best_f1": float(f1_score(test.label, test.cosine >= threshold, zero_division=0)),
        "threshold": threshold,
        "n_pairs": len(test.label),
        "n_positive": int(test.label.sum()),
    }


def retrieval_queries(
    test_ids: list[str], links: list[Link], relations: list[str]
) -> tuple[list[set[int]], str]:
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


def retrieval_metrics(
    emb: Embeddings,
    test_ids: list[str],
    relevant: list[set[int]],
    chunk_size: int,
    created: np.ndarray | None = None,
) -> dict[str, float | int | None]:
    """Pool retrieval metrics by cosine, and time-aware ones when creation dates are known."""
    return scored_retrieval_metrics(cosine_rows(emb.of(test_ids)), relevant, chunk_size, created)


def scored_retrieval_metrics(
    similarity: Similarity,
    relevant: list[set[int]],
    chunk_size: int,
    created: np.ndarray | None = None,
    prefix: str = "",
) -> dict[str, float | int | None]:
    """The same metrics for any similarity (lexical, hybrid, the benchmark's contenders)."""
    rows = [i for i, rel in enumerate(relevant) if rel]
    metrics = ranking_metrics(ranks_of_relevant(similarity, relevant, rows, None, chunk_size), prefix)
    if created is not None:
        # An undated ticket is never a query, and (dated +inf) never a candidate.
        dated = [i for i in rows if not np.isnan(created[i])]
        latest = np.where(np.isnan(created), np.inf, created)
        metrics.update(
            ranking_metrics(
                ranks_of_relevant(similarity, relevant, dated, latest, chunk_size), f"{prefix}time_aware_"
            )
        )
    return metrics


@dataclass
class ModelEvaluation:
    metrics: dict[str, Any]
    val: PairScores
    test: PairScores
    fusion: dict[str, Any] = field(
        default_factory=dict
    )  # the lexical weight, how it was chosen, the val curve


def evaluate_model(
    emb: Embeddings,
    val_pairs: list[Pair],
    test_pairs: list[Pair],
    test_ids: list[str],
    links: list[Link],
    relations: list[str],
    positive_threshold: float,
    chunk_size: int,
    created: dict[str, str | None] | None = None,
) -> ModelEvaluation:
    """Dense metrics alone for one model; the F1 threshold comes from val and is applied to test."""
    val = pair_scores(emb, val_pairs, positive_threshold)
    test = pair_scores(emb, test_pairs, positive_threshold)
    metrics: dict[str, Any] = dict(pair_metrics(test, best_threshold(val)))
    relevant, used = retrieval_queries(test_ids, links, relations)
    timestamps = created_timestamps(test_ids, created) if created else None
    metrics.update(retrieval_metrics(emb, test_ids, relevant, chunk_size, timestamps))
    metrics["retrieval_relations"] = used
    return ModelEvaluation(metrics, val, test)


# ---------------------------------------------------------------- hybrid


@dataclass
class RetrievalPool:
    """One split's tickets as a search corpus: who is relevant to whom, when each was filed, its BM25
    index."""

    ids: list[str]
    relevant: list[set[int]]
    relations_used: str
    created: np.ndarray | None
    lexical: LexicalIndex

    def __post_init__(self) -> None:
        self._time_aware_rows: dict[tuple[int, ...], np.ndarray] = {}

    @classmethod
    def build(
        cls,
        ids: list[str],
        texts: list[str],
        links: list[Link],
        relations: list[str],
        created: dict[str, str | None],
        lexical: LexicalSettings,
    ) -> RetrievalPool:
        relevant, used = retrieval_queries(ids, links, relations)
        return cls(ids, relevant, used, created_timestamps(ids, created), LexicalIndex(texts, lexical))

    def lexical_rows(self, chunk: list[int], mask: np.ndarray, time_aware: bool) -> np.ndarray:
        """BM25 rows of this pool (a Similarity); time-aware rows (an index per query) are kept, as every
        model scored on the pool reuses them."""
        if not time_aware:
            return self.lexical.rows(chunk)
        key = tuple(chunk)
        if key not in self._time_aware_rows:
            self._time_aware_rows[key] = self.lexical.rows(chunk, mask)
        return self._time_aware_rows[key]


@dataclass
class HeldOut:
    """What every model is scored on, built once: val and test pairs and the two retrieval pools."""

    val_pairs: list[Pair]
    test_pairs: list[Pair]
    val: RetrievalPool
    test: RetrievalPool
    positive_threshold: float = 0.5
    chunk_size: int = 1024

    def lexical(self, pool: RetrievalPool) -> Similarity:
        return pool.lexical_rows


def pool_pair_scores(
    similarity: Similarity, pool: RetrievalPool, pairs: list[Pair], chunk_size: int
) -> np.ndarray:
    """A pair's score as the pool sees it: the mean of the score each ticket gives the other when it searches
    the pool (min-max scales differ per query, so one direction alone would not be symmetric)."""
    index = {tid: i for i, tid in enumerate(pool.ids)}
    rows = sorted({index[t] for p in pairs for t in (p.a, p.b)})
    where = {row: n for n, row in enumerate(rows)}
    seen = np.empty((len(rows), len(pool.ids)), dtype=np.float64)
    n = len(pool.ids)
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        mask = np.ones((len(chunk), n), dtype=bool)
        mask[np.arange(len(chunk)), chunk] = False
        seen[start : start + len(chunk)] = similarity(chunk, mask, False)
    a = np.array([index[p.a] for p in pairs], dtype=np.int64)
    b = np.array([index[p.b] for p in pairs], dtype=np.int64)
    forward = seen[[where[int(i)] for i in a], b] if len(pairs) else np.zeros(0)
    backward = seen[[where[int(i)] for i in b], a] if len(pairs) else np.zeros(0)
    return (forward + backward) / 2.0


def fused(emb: Embeddings, held: HeldOut, pool: RetrievalPool, fusion: Fusion) -> Similarity:
    return hybrid_rows(cosine_rows(emb.of(pool.ids)), held.lexical(pool), fusion)


def lexical_weight(emb: Embeddings, held: HeldOut, settings: FusionSettings) -> WeightChoice:
    """The configured weight, or the grid's best on val duplicate retrieval (never test)."""
    if settings.weight is not None:
        return WeightChoice(settings.weight, [], 0)
    return choose_weight(
        cosine_rows(emb.of(held.val.ids)),
        held.lexical(held.val),
        held.val.relevant,
        list(settings.grid),
        settings.method,
        settings.rrf_k,
        held.chunk_size,
    )


def score_model(emb: Embeddings, held: HeldOut, settings: FusionSettings) -> ModelEvaluation:
    """Dense and hybrid metrics of one model (see the module docstring)."""
    val = pair_scores(emb, held.val_pairs, held.positive_threshold)
    test = pair_scores(emb, held.test_pairs, held.positive_threshold)
    metrics: dict[str, Any] = dict(pair_metrics(test, best_threshold(val)))
    pool = held.test
    metrics.update(
        scored_retrieval_metrics(cosine_rows(emb.of(pool.ids)), pool.relevant, held.chunk_size, pool.created)
    )
    metrics["retrieval_relations"] = pool.relations_used
    choice = lexical_weight(emb, held, settings)
    fusion = Fusion(settings.method, choice.weight, settings.rrf_k)
    hybrid = fused(emb, held, pool, fusion)
    metrics.update(scored_retrieval_metrics(hybrid, pool.relevant, held.chunk_size, pool.created, "hybrid_"))
    metrics["hybrid_weight"] = choice.weight
    summary: dict[str, Any] = {
        "method": settings.method,
        "weight": choice.weight,
        "rrf_k": settings.rrf_k,
        "chosen_on": "val" if settings.weight is None else "config",
        "val_queries": choice.n_queries,
        "val_curve": choice.curve,
    }
    if settings.method == "minmax":  # RRF scores are ranks, not scores a pair threshold could be read from
        metrics.update(hybrid_pair_metrics(emb, held, fusion, summary))
    return ModelEvaluation(metrics, val, test, summary)


def hybrid_pair_metrics(
    emb: Embeddings, held: HeldOut, fusion: Fusion, summary: dict[str, Any]
) -> dict[str, Any]:
    """Pair metrics of the hybrid pair score (pool_pair_scores), threshold from val; `summary` learns which
    pair score, dense or hybrid, has the better val average precision (the one a threshold is read from)."""
    val = labelled(
        pool_pair_scores(fused(emb, held, held.val, fusion), held.val, held.val_pairs, held.chunk_size),
        held.val_pairs,
        held.positive_threshold,
    )
    test = labelled(
        pool_pair_scores(fused(emb, held, held.test, fusion), held.test, held.test_pairs, held.chunk_size),
        held.test_pairs,
        held.positive_threshold,
    )
    dense_val = pair_metrics(pair_scores(emb, held.val_pairs, held.positive_threshold), 0.0)[
        "average_precision"
    ]
    hybrid_val = pair_metrics(val, 0.0)["average_precision"]
    summary["pair_score"] = "hybrid" if (hybrid_val or 0.0) > (dense_val or 0.0) else "dense"
    summary["val_average_precision"] = {"dense": dense_val, "hybrid": hybrid_val}
    scored = pair_metrics(test, best_threshold(val))
    return {f"hybrid_{k}": scored[k] for k in ("roc_auc", "average_precision", "best_f1", "threshold")}


def lexical_metrics(held: HeldOut) -> dict[str, Any]:
    """BM25 alone on the test pool (the keyword index a user would put beside any model); its pair score is
    the min-max normalised BM25 both ways, the hybrid's with weight 1."""
    pool = held.test
    metrics: dict[str, Any] = scored_retrieval_metrics(
        held.lexical(pool), pool.relevant, held.chunk_size, pool.created
    )
    val, test = (
        labelled(
            pool_pair_scores(normalised(held.lexical(where)), where, pairs, held.chunk_size),
            pairs,
            held.positive_threshold,
        )
        for where, pairs in ((held.val, held.val_pairs), (pool, held.test_pairs))
    )
    metrics.update(pair_metrics(test, best_threshold(val)))
    return metrics


def normalised(similarity: Similarity) -> Similarity:
    """A similarity min-max scaled over each query's candidates."""
    return lambda rows, mask, time_aware: minmax(similarity(rows, mask, time_aware), mask)


# The metrics whose change from the base model evaluate/metrics.json reports (delta).
DELTA_KEYS = (
    "average_precision",
    "roc_auc",
    "spearman",
    "recall_at_10",
    "mrr",
    "map",
    "time_aware_recall_at_10",
    "time_aware_mrr",
    "time_aware_map",
    "hybrid_recall_at_10",
    "hybrid_mrr",
    "hybrid_map",
    "hybrid_time_aware_recall_at_10",
    "hybrid_time_aware_mrr",
    "hybrid_average_precision",
)


def metric_deltas(finetuned: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    """The fine-tuned model's metrics minus the base model's (None where either is not a number)."""
    return {k: _delta(finetuned.get(k), base.get(k)) for k in DELTA_KEYS}


def _delta(new: Any, old: Any) -> float | None:
    return round(new - old, 5) if isinstance(new, float) and isinstance(old, float) else None


def rounded(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics to 4 decimals, for a log line."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
