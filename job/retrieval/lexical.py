"""Keyword scoring, the lexical half of hybrid retrieval: Okapi BM25 as Lucene computes it, from `bm25s`.

Tokens: lower-cased runs of two or more word characters (bm25s's and scikit-learn's pattern `\\b\\w\\w+\\b`),
minus Lucene's 33 English stop words (bm25s's "en" list, the same as Elasticsearch's `_english_`), no
stemming. Ticket text is English prose around identifiers (class names, config keys, exception names):
splitting at punctuation keeps `dfs.namenode.name.dir` findable by each of its parts, and a stemmer
would mangle identifiers (and is a compiled extra). k1 = 1.2 and b = 0.75 are Lucene's defaults, so an
engine with its default similarity ranks the same way (docs/retrieval.md).

Statistics: in pool mode one index holds every candidate ticket (the query's own row is in it, as a filed
ticket is in the tracker's index, and is never returned). In time-aware mode a query is scored against an
index of the tickets filed before it only: document frequencies and the average length come from those
tickets, never from a later one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TOKEN_PATTERN = r"(?u)\b\w\w+\b"


@dataclass(frozen=True)
class LexicalSettings:
    """How text becomes BM25 scores (the `retrieval.lexical` settings)."""

    k1: float = 1.2
    b: float = 0.75
    stopwords: str = "en"  # bm25s's name for Lucene's English stop words; "none" keeps every word

    def describe(self) -> dict[str, Any]:
        """Everything a consumer needs to score the same way (retrieval.json)."""
        bm25s = _bm25s()

        return {
            "library": "bm25s",
            "library_version": bm25s.__version__,
            "method": "lucene",
            "k1": self.k1,
            "b": self.b,
            "tokenizer": {
                "lower": True,
                "pattern": TOKEN_PATTERN,
                "stemmer": None,
                "stopwords": list(stop_words(self.stopwords)),
            },
        }


def _bm25s() -> Any:
    """bm25s, quiet: its import sets its logger to DEBUG, which would print a line per index built to
    stderr."""
    import logging

    import bm25s

    logging.getLogger("bm25s").setLevel(logging.ERROR)
    return bm25s


def stop_words(name: str) -> tuple[str, ...]:
    from bm25s.stopwords import STOPWORDS_EN

    return STOPWORDS_EN if name == "en" else ()


def tokenizer(settings: LexicalSettings) -> Any:
    bm25s = _bm25s()

    return bm25s.tokenization.Tokenizer(
        lower=True, splitter=TOKEN_PATTERN, stopwords=list(stop_words(settings.stopwords))
    )


def _bm25(settings: LexicalSettings, docs: list[list[int]], vocab: dict[str, int]) -> Any:
    bm25s = _bm25s()

    model = bm25s.BM25(k1=settings.k1, b=settings.b, method="lucene")
    # A copy: bm25s adds its empty-document token to the dict it is given.
    model.index((docs, dict(vocab)), show_progress=False)
    return model


@dataclass
class LexicalIndex:
    """BM25 over a fixed list of texts; each text is also a query (a ticket searching the others)."""

    texts: list[str]
    settings: LexicalSettings = field(default_factory=LexicalSettings)

    def __post_init__(self) -> None:
        self._tokenizer = tokenizer(self.settings)
        self.docs: list[list[int]] = self._tokenizer.tokenize(
            self.texts, update_vocab=True, show_progress=False
        )
        self.vocab: dict[str, int] = dict(self._tokenizer.get_vocab_dict())
        self._empty = self.vocab.get("")
        self._pool = _bm25(self.settings, self.docs, self.vocab) if self.texts else None

    def __len__(self) -> int:
        return len(self.texts)

    def query_ids(self, text: str) -> list[int]:
        """A new text's tokens as ids of this index's vocabulary (words it has never seen score nothing)."""
        return self._terms(self._tokenizer.tokenize([text], update_vocab="never", show_progress=False)[0])

    def _terms(self, ids: list[int]) -> list[int]:
        return [i for i in ids if i != self._empty]

    def scores(self, query: list[int]) -> np.ndarray:
        """BM25 of one query (token ids) against every text of the index."""
        if self._pool is None or not query:
            return np.zeros(len(self.texts), dtype=np.float64)
        return np.asarray(self._pool.get_scores_from_ids(query), dtype=np.float64)

    def rows(self, rows: list[int], candidates: np.ndarray | None = None) -> np.ndarray:
        """Scores of texts `rows` (as queries) against every text, len(rows) x len(texts).

        With `candidates` (one boolean row per query), each query is scored by an index of its candidates
        alone, so no other text shapes its statistics; the others score -inf."""
        out = np.empty((len(rows), len(self.texts)), dtype=np.float64)
        for n, row in enumerate(rows):
            query = self._terms(self.docs[row])
            if candidates is None:
                out[n] = self.scores(query)
                continue
            among = np.flatnonzero(candidates[n])
            out[n] = -np.inf
            if len(among) and query:
                model = _bm25(self.settings, [self.docs[i] for i in among], self.vocab)
                out[n, among] = np.asarray(model.get_scores_from_ids(query), dtype=np.float64)
            elif len(among):
                out[n, among] = 0.0
        return out

    def save(self, folder: Path) -> None:
        """The index as bm25s saves it, plus the tokenizer's vocabulary and stop words beside it."""
        assert self._pool is not None, "an empty index has nothing to save"
        self._pool.save(str(folder), show_progress=False)
        self._tokenizer.save_vocab(str(folder))
        self._tokenizer.save_stopwords(str(folder))


class SavedLexicalIndex:
    """A LexicalIndex as `save` wrote it, for queries of new texts (suggest): no text is kept or needed."""

    def __init__(self, folder: Path, settings: LexicalSettings) -> None:
        bm25s = _bm25s()

        self._model = bm25s.BM25.load(str(folder), load_vocab=True, show_progress=False)
        self._tokenizer = tokenizer(settings)
        self._tokenizer.load_vocab(str(folder))
        self._tokenizer.load_stopwords(str(folder))
        self._empty = self._tokenizer.get_vocab_dict().get("")
        self.rows = int(self._model.scores["num_docs"])

    def query_ids(self, text: str) -> list[int]:
        ids = self._tokenizer.tokenize([text], update_vocab="never", show_progress=False)[0]
        return [i for i in ids if i != self._empty]

    def scores(self, query: list[int]) -> np.ndarray:
        if not query:
            return np.zeros(self.rows, dtype=np.float64)
        return np.asarray(self._model.get_scores_from_ids(query), dtype=np.float64)
