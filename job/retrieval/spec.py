"""retrieval.json: what a consumer needs to rank tickets exactly as the run's hybrid metrics were computed.

Written by evaluate beside model/: the dense model (folder, similarity, text settings), the lexical
settings (bm25s's Lucene BM25, k1, b, the tokenizer and its stop words), the fusion (method, the lexical
weight and how it was chosen, with the val curve), and which pair score a threshold applies to. A
consumer that reads it, loads model/ and indexes its tickets' text gets the run's hybrid ranks
(`hybrid_similarity`; tests/test_retrieval.py does exactly that from a run's files alone).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from job.config import JobConfig
from job.errors import RunStateError
from job.retrieval.fusion import FUSIONS, Fusion, FusionSettings, hybrid_rows
from job.retrieval.lexical import LexicalIndex, LexicalSettings
from job.retrieval.ranking import Similarity, cosine_rows

RETRIEVAL_FILE = "retrieval.json"
FORMAT = 1


def lexical_settings(cfg: JobConfig) -> LexicalSettings:
    lexical = cfg.retrieval.lexical
    return LexicalSettings(k1=lexical.k1, b=lexical.b, stopwords=lexical.stopwords)


def fusion_settings(cfg: JobConfig) -> FusionSettings:
    fusion = cfg.retrieval.fusion
    return FusionSettings(fusion.method, fusion.weight, tuple(fusion.weight_grid), fusion.rrf_k)


def retrieval_spec(cfg: JobConfig, run_id: str, fusion: dict[str, Any]) -> dict[str, Any]:
    """The run's retrieval.json from its config and the fine-tuned model's fusion summary
    (ModelEvaluation.fusion)."""
    return {
        "format": FORMAT,
        "run_id": run_id,
        "dense": {
            "model": "model/",
            "similarity": "cosine",
            "normalized": True,
            "max_seq_length": cfg.model.max_seq_length,
            "text_prefix": cfg.model.text_prefix,
            "text_template": cfg.data.text_template,
        },
        "lexical": {
            **lexical_settings(cfg).describe(),
            "field": "the ticket's text (data.text_template), without model.text_prefix",
        },
        "fusion": {
            "method": fusion["method"],
            "weight": fusion["weight"],
            "rrf_k": fusion["rrf_k"],
            "normalization": "per query, min-max over its candidates"
            if fusion["method"] == "minmax"
            else None,
            "score": "(1 - weight) * dense + weight * lexical",
            "chosen_on": fusion["chosen_on"],
            "val_queries": fusion["val_queries"],
            "val_objective": "(recall@10 + MRR) / 2 of val duplicate retrieval",
            "val_curve": fusion["val_curve"],
        },
        "pair_score": {
            "kind": fusion.get("pair_score", "dense"),
            "val_average_precision": fusion.get("val_average_precision"),
        },
    }


def read_fusion(spec: Any, where: str) -> tuple[LexicalSettings, Fusion]:
    """The lexical settings and fusion of a retrieval.json, checked (RunStateError naming `where` if not)."""
    try:
        lexical, fusion = spec["lexical"], spec["fusion"]
        settings = LexicalSettings(
            k1=float(lexical["k1"]),
            b=float(lexical["b"]),
            stopwords="en" if lexical["tokenizer"]["stopwords"] else "none",
        )
        method, weight, rrf_k = str(fusion["method"]), float(fusion["weight"]), int(fusion["rrf_k"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RunStateError(
            f"{where} is not a retrieval spec the job wrote ({type(exc).__name__}: {exc})"
        ) from None
    if (
        spec.get("format") != FORMAT
        or method not in FUSIONS
        or not (0.0 <= weight <= 1.0)
        or rrf_k < 1
        or not all(math.isfinite(v) for v in (settings.k1, settings.b))
    ):
        raise RunStateError(f"{where}: unknown format, fusion method, or a weight outside [0, 1]")
    return settings, Fusion(method, weight, rrf_k)


def hybrid_similarity(spec: dict[str, Any], vectors: np.ndarray, texts: list[str], where: str) -> Similarity:
    """The run's hybrid similarity over a corpus of ticket `texts` with the model's unit `vectors`."""
    lexical, fusion = read_fusion(spec, where)
    index = LexicalIndex(texts, lexical)
    return hybrid_rows(
        cosine_rows(vectors),
        lambda rows, mask, time_aware: index.rows(rows, mask if time_aware else None),
        fusion,
    )
