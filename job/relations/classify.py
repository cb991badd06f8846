"""Name the relation between two linked tickets.

The methods (classify.method, the table in job/relations/methods.py) are scored the same way
(`relation_metrics`, here); the logistic one is this module's `LogisticClassifier`: logistic regression
over pair features of two frozen embeddings.

Logistic features of (source u, target v): |u-v| and u*v (symmetric), u-v (direction: which one caused
or blocks the other), cosine, and metadata that carries the relation: the signed gap between
creation dates (a regression comes after its cause; a clone right after its original), same
project, same category, and word overlap. Trained on the train split's links, scored on the
test split's. Saved as JSON (weights, scaler, classes), never pickle.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support
from sklearn.preprocessing import StandardScaler

from job.config import ClassifyConfig
from job.data.records import Link, Ticket
from job.errors import RunStateError
from job.evaluation.evaluate import Embeddings
from job.relations.base import FitInputs, Fitted, RelationClassifier, RelationLinks
from job.relations.methods import RELATION_CLASSIFIERS

LOGISTIC_FORMAT = RELATION_CLASSIFIERS["logistic"].format
META_FEATURES = (
    "cosine",
    "created_gap_sign",
    "created_gap_log_days",
    "has_dates",
    "same_project",
    "same_category",
    "word_jaccard",
)
_WORD = re.compile(r"[a-z0-9_]+")


def _days(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    ta = datetime.fromisoformat(a.replace("Z", "+00:00"))
    tb = datetime.fromisoformat(b.replace("Z", "+00:00"))
    if (ta.tzinfo is None) != (tb.tzinfo is None):
        ta, tb = ta.replace(tzinfo=None), tb.replace(tzinfo=None)
    return (tb - ta).total_seconds() / 86400.0


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def metadata_features(source: Ticket, target: Ticket, cosine: float) -> list[float]:
    gap = _days(source.created, target.created)
    wa, wb = _words(source.text), _words(target.text)
    return [
        cosine,
        0.0 if gap is None else float(np.sign(gap)),
        0.0 if gap is None else math.copysign(math.log1p(abs(gap)), gap),
        0.0 if gap is None else 1.0,
        float(source.project is not None and source.project == target.project),
        float(source.category is not None and source.category == target.category),
        len(wa & wb) / len(wa | wb) if wa | wb else 0.0,
    ]


def pair_features(links: list[Link], tickets: dict[str, Ticket], emb: Embeddings) -> np.ndarray:
    # float64: products of near-zero float32 components underflow to denormals, and a column of
    # denormals and zeros makes StandardScaler divide by a denormal scale (NaN features).
    u = emb.of([link.source for link in links]).astype(np.float64)
    v = emb.of([link.target for link in links]).astype(np.float64)
    cos = np.einsum("ij,ij->i", u, v)
    meta = np.array(
        [
            metadata_features(tickets[link.source], tickets[link.target], float(c))
            for link, c in zip(links, cos, strict=True)
        ],
        dtype=np.float64,
    ).reshape(len(links), -1)
    return np.hstack([np.abs(u - v), u * v, u - v, meta])


class NotEnoughClasses(ValueError):
    """Fewer than two relations have enough training links: there is nothing to classify."""


@dataclass
class ClassifierResult:
    metrics: dict[str, Any]
    model: dict[str, Any]
    confusion: np.ndarray
    classes: list[str]
    notes: list[str] = field(default_factory=list)


def _per_class(y_true: list[str], y_pred: list[str], classes: list[str]) -> dict[str, dict[str, float]]:
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    return {
        c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    }


def _oversample(
    x: np.ndarray, y: np.ndarray, cfg: ClassifyConfig, seed: int, notes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """SMOTE when imbalanced-learn is installed and every class has a neighbour to interpolate with."""
    if not cfg.smote:
        return x, y
    try:
        from imblearn.over_sampling import SMOTE
    except ImportError:
        notes.append("SMOTE skipped: imbalanced-learn is not installed (pip install '.[smote]')")
        return x, y
    smallest = min(Counter(y.tolist()).values())
    if smallest < 2:
        notes.append(f"SMOTE skipped: the smallest class has {smallest} example")
        return x, y
    sampler = SMOTE(k_neighbors=min(5, smallest - 1), random_state=seed)
    x_res, y_res = sampler.fit_resample(x, y)
    notes.append(f"SMOTE: {len(y)} -> {len(y_res)} training examples")
    return x_res, y_res


def choose_relations(
    train_links: list[Link], test_links: list[Link], min_class_count: int, val_links: list[Link] | None = None
) -> RelationLinks:
    """Keep the relations with at least `min_class_count` training links (rarer ones cannot be learnt)."""
    notes: list[str] = []
    counts = Counter(link.relation for link in train_links)
    classes = sorted(c for c, n in counts.items() if n >= min_class_count)
    dropped = {c: n for c, n in counts.items() if n < min_class_count}
    if dropped:
        notes.append(f"classes below min_class_count={min_class_count} dropped: {dropped}")
    if len(classes) < 2:
        raise NotEnoughClasses(
            f"need at least 2 relations with >= {min_class_count} training links, have {dict(counts)}"
        )
    test = [link for link in test_links if link.relation in classes]
    if len(test) < len(test_links):
        notes.append(f"{len(test_links) - len(test)} test links of dropped classes not scored")
    return RelationLinks(
        classes,
        [link for link in train_links if link.relation in classes],
        [link for link in val_links or [] if link.relation in classes],
        test,
        counts,
        dropped,
        notes,
    )


def relation_metrics(links: RelationLinks, y_pred: list[str], method: str) -> dict[str, Any]:
    """metrics.json of the classify step, the same for every method: per-class P/R/F1 with explicit labels,
    macro-F1, and the majority class's scores on the same test links."""
    y_true = [link.relation for link in links.test]
    scored = bool(links.test)
    majority = links.train_counts.most_common(1)[0][0]
    return {
        "method": method,
        "macro_f1": float(f1_score(y_true, y_pred, labels=links.classes, average="macro", zero_division=0))
        if scored
        else None,
        "per_class": _per_class(y_true, y_pred, links.classes),
        "majority_class": majority,
        "majority_macro_f1": float(
            f1_score(y_true, [majority] * len(y_true), labels=links.classes, average="macro", zero_division=0)
        )
        if scored
        else None,
        "n_train": len(links.train),
        "n_test": len(links.test),
        "classes": links.classes,
        "dropped_classes": links.dropped,
        "notes": links.notes,
    }


def relation_confusion(links: RelationLinks, y_pred: list[str]) -> np.ndarray:
    if not links.test:
        return np.zeros((len(links.classes),) * 2, int)
    return confusion_matrix([link.relation for link in links.test], y_pred, labels=links.classes)


def train_classifier(
    train_links: list[Link],
    test_links: list[Link],
    tickets: dict[str, Ticket],
    emb: Embeddings,
    cfg: ClassifyConfig,
    seed: int,
) -> ClassifierResult:
    """Logistic regression over pair features of frozen embeddings (classify.method: logistic)."""
    links = choose_relations(train_links, test_links, cfg.min_class_count)
    model, y_pred = fit_logistic(links, tickets, emb, cfg, seed)
    metrics = relation_metrics(links, y_pred, "logistic")
    return ClassifierResult(metrics, model, relation_confusion(links, y_pred), links.classes, links.notes)


def fit_logistic(
    links: RelationLinks, tickets: dict[str, Ticket], emb: Embeddings, cfg: ClassifyConfig, seed: int
) -> tuple[dict[str, Any], list[str]]:
    """The saved model (JSON-ready) trained on `links.train`, and its predictions for `links.test`; SMOTE's
    notes go into `links.notes`."""
    x_train = pair_features(links.train, tickets, emb)
    y_train = np.array([link.relation for link in links.train])
    scaler = StandardScaler().fit(x_train)
    x_fit, y_fit = _oversample(scaler.transform(x_train), y_train, cfg, seed, links.notes)
    clf = LogisticRegression(
        max_iter=3000,
        C=0.5,
        class_weight="balanced" if cfg.class_weight == "balanced" else None,
        random_state=seed,
    )
    clf.fit(x_fit, y_fit)
    test = links.test
    y_pred = clf.predict(scaler.transform(pair_features(test, tickets, emb))).tolist() if test else []
    model = {
        "format": LOGISTIC_FORMAT,
        "classes": clf.classes_.tolist(),
        "coef": clf.coef_.tolist(),
        "intercept": clf.intercept_.tolist(),
        "scaler_mean": scaler.mean_.tolist(),
        "scaler_scale": scaler.scale_.tolist(),
        "features": ["abs_diff[d]", "product[d]", "diff[d]", *META_FEATURES],
        "embedding_dim": int(emb.vectors.shape[1]),
    }
    return model, y_pred


def check_logistic_model(model: dict[str, Any], where: str) -> None:
    """A saved logistic model that predict can apply: distinct class names, and finite weights whose shapes
    agree (RunStateError naming `where` and the field otherwise). The file came from storage: it may be
    edited."""
    classes = model.get("classes")
    if not (
        isinstance(classes, list)
        and len(classes) >= 2
        and all(isinstance(c, str) and c for c in classes)
        and len(set(classes)) == len(classes)
    ):
        raise RunStateError(f"{where}: classes: expected a list of at least two distinct relation names")
    arrays = {}
    for key in ("coef", "intercept", "scaler_mean", "scaler_scale"):
        try:
            arrays[key] = np.asarray(model.get(key), dtype=np.float64)
        except (TypeError, ValueError):
            raise RunStateError(f"{where}: {key}: expected numbers") from None
        if not np.all(np.isfinite(arrays[key])):
            raise RunStateError(f"{where}: {key}: expected finite numbers")
    rows = 1 if len(classes) == 2 else len(classes)
    features = arrays["scaler_mean"].shape
    if (
        arrays["coef"].ndim != 2
        or arrays["coef"].shape[0] != rows
        or arrays["intercept"].shape != (rows,)
        or len(features) != 1
        or arrays["coef"].shape[1] != features[0]
        or arrays["scaler_scale"].shape != features
        or np.any(arrays["scaler_scale"] == 0)
    ):
        raise RunStateError(
            f"{where}: coef, intercept and the scaler do not fit {len(classes)} classes and one "
            "feature vector"
        )


def logistic_probabilities(model: dict[str, Any], features: np.ndarray) -> np.ndarray:
    """Class probabilities (columns in `model["classes"]` order) of a saved logistic model, as
    scikit-learn's predict_proba computes them: softmax of the logits, a sigmoid for two classes."""
    x = (features - np.array(model["scaler_mean"])) / np.array(model["scaler_scale"])
    logits = x @ np.array(model["coef"]).T + np.array(model["intercept"])
    if logits.shape[1] == 1:  # binary logistic regression stores one row
        positive = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.stack([1.0 - positive, positive], axis=1)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def predict(model: dict[str, Any], features: np.ndarray) -> list[str]:
    """Apply a saved classifier (the JSON from `train_classifier`) to pair features."""
    x = (features - np.array(model["scaler_mean"])) / np.array(model["scaler_scale"])
    logits = x @ np.array(model["coef"]).T + np.array(model["intercept"])
    if logits.shape[1] == 1:  # binary logistic regression stores one row
        return [model["classes"][int(v > 0)] for v in logits[:, 0]]
    return [model["classes"][i] for i in np.argmax(logits, axis=1)]


def dumps_model(model: dict[str, Any]) -> bytes:
    return json.dumps(model).encode("utf-8")


class LogisticClassifier(RelationClassifier):
    """classify.method logistic: `fit_logistic` over the fine-tuned embeddings (the index step's, when it
    ran), saved as classifier/model.json. Loaded, it encodes new tickets with the run's embedding model as
    the classify step did (same max sequence length), then applies the saved weights."""

    def __init__(self, model: dict[str, Any], encoder: Any = None) -> None:
        self.model = model
        self.classes = list(model["classes"])
        self.encoder = encoder  # None until loaded: fit scores the test links from the step's embeddings

    @classmethod
    def fit(cls, inputs: FitInputs) -> Fitted:
        links = inputs.links
        needed = sorted({t for link in links.train + links.test for t in (link.source, link.target)})
        cfg = inputs.cfg
        model, predictions = fit_logistic(
            links, inputs.tickets, inputs.embeddings(needed), cfg.classify, cfg.train.seed
        )
        model["embedding_max_seq_length"] = cfg.model.max_seq_length  # predict encodes as this step did
        return Fitted(cls(model), predictions)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.json").write_bytes(dumps_model(self.model))

    @classmethod
    def check(cls, descriptor: dict[str, Any], folder: Path) -> None:
        check_logistic_model(descriptor, str(folder / "model.json"))

    @classmethod
    def load(
        cls, folder: Path, descriptor: dict[str, Any], embedding_model_dir: Path | None, device: str | None
    ) -> LogisticClassifier:
        from job.embedding.model import load_model

        assert embedding_model_dir is not None  # predict refuses before: the entry needs the embedding model
        return cls(
            descriptor,
            load_model(
                str(embedding_model_dir), int(descriptor.get("embedding_max_seq_length", 256)), device
            ),
        )

    def predict_proba(self, pairs: list[tuple[Ticket, Ticket]]) -> np.ndarray:
        from job.embedding.model import encode
        from job.log import get_logger

        if self.encoder is None:
            raise RunStateError(
                "the logistic classifier encodes tickets with the run's embedding model: load it"
            )
        if not pairs:
            return np.zeros((0, len(self.classes)))
        # Ids of our own: the consumer's ticket ids may repeat or be missing.
        tickets: dict[str, Ticket] = {}
        links = []
        for number, (source, target) in enumerate(pairs):
            a, b = f"source-{number}", f"target-{number}"
            tickets[a] = Ticket(a, source.text, source.category, source.project, source.created)
            tickets[b] = Ticket(b, target.text, target.category, target.project, target.created)
            links.append(Link(a, b, "unknown"))
        ids = list(tickets)
        vectors = encode(
            self.encoder, [tickets[t].text for t in ids], 32, get_logger(step="predict"), "encode for predict"
        )
        return logistic_probabilities(self.model, pair_features(links, tickets, Embeddings(ids, vectors)))
