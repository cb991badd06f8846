"""BM25 (bm25s, Okapi) as a similarity baseline scored with the job's own metric code.

Pair score: the symmetric, self-normalised BM25 score
    s(a, b) = (bm25(query a, doc b) / bm25(a, a) + bm25(b, a) / bm25(b, b)) / 2,
which lies in [0, 1] for any pair, so the job's F1 threshold grid (chosen on val) applies
unchanged. Retrieval ranks test tickets by the same normalised score from each query, through the job's
own `job.evaluation.evaluate.scored_retrieval_metrics`, so ties and self-exclusion follow the job's rules.
"""

from __future__ import annotations

import re

import numpy as np

_TOKEN = re.compile(r"[a-z0-9_]+")
STOPWORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "if", "in", "into", "is", "it", "its", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "were", "will", "with", "when", "which", "while", "i", "we", "you", "can"])


def tokenize(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS and len(t) > 1]


class BM25Scorer:
    """Normalised BM25 similarities among a fixed set of tickets (IDF from that set)."""

    def __init__(self, ids: list[str], texts: list[str], k1: float = 1.5, b: float = 0.75) -> None:
        import bm25s

        self.ids = ids
        self.index = {tid: i for i, tid in enumerate(ids)}
        self.tokens = [tokenize(t) or ["_empty_"] for t in texts]
        self.model = bm25s.BM25(k1=k1, b=b)
        self.model.index(self.tokens, show_progress=False)
        self.self_score = np.array([self._raw(i)[i] for i in range(len(ids))], dtype=np.float64)
        self.self_score[self.self_score <= 0] = 1.0

    def _raw(self, row: int) -> np.ndarray:
        return np.asarray(self.model.get_scores(self.tokens[row]), dtype=np.float64)

    def normalised_row(self, row: int) -> np.ndarray:
        """Score of query `row` against every ticket, divided by the query's own self-score."""
        return self._raw(row) / self.self_score[row]

    def matrix(self, rows: list[int]) -> np.ndarray:
        """Symmetric normalised scores among `rows` (len(rows) x len(rows))."""
        one_way = np.vstack([self.normalised_row(r)[rows] for r in rows])
        return (one_way + one_way.T) / 2.0

    def pair_scores(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        rows: dict[int, np.ndarray] = {}
        out = np.empty(len(pairs), dtype=np.float64)
        for n, (a, b) in enumerate(pairs):
            ia, ib = self.index[a], self.index[b]
            for i in (ia, ib):
                if i not in rows:
                    rows[i] = self.normalised_row(i)
            out[n] = (rows[ia][ib] + rows[ib][ia]) / 2.0
        return out
