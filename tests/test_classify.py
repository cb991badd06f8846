"""Relation classifier: trains, reports every class explicitly, saves without pickle and reloads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from job.config import ClassifyConfig
from job.data.records import Link, Ticket
from job.evaluation.evaluate import Embeddings
from job.relations.classify import ClassifierResult, dumps_model, pair_features, predict, train_classifier


def _world(n_per_class: int = 30, seed: int = 0) -> tuple[list[Link], dict[str, Ticket], Embeddings]:
    """Tickets whose creation order and vectors carry the relation, as real ones partly do."""
    rng = np.random.default_rng(seed)
    tickets: dict[str, Ticket] = {}
    links: list[Link] = []
    vectors = []
    for relation, gap_days in (("causes", 40), ("clones", 0), ("duplicate", -3)):
        for i in range(n_per_class):
            a, b = f"{relation}-{i}-a", f"{relation}-{i}-b"
            base = rng.normal(size=8)
            for tid, vec, day in (
                (a, base, 1),
                (b, base + rng.normal(scale=0.3, size=8), 1 + gap_days + i % 3),
            ):
                tickets[tid] = Ticket(
                    tid,
                    f"{relation} words {i}",
                    project="P",
                    created="2020-01-01T00:00:00+00:00"
                    if day == 1
                    else f"2020-{1 + (day // 28) % 12:02d}-{1 + day % 28:02d}T00:00:00+00:00",
                )
                vectors.append(vec / np.linalg.norm(vec))
            links.append(Link(a, b, relation))
    emb = Embeddings(list(tickets), np.array(vectors, dtype=np.float32))
    return links, tickets, emb


def test_trains_reports_and_reloads_without_pickle() -> None:
    links, tickets, emb = _world()
    train, test = links[::2], links[1::2]
    result = train_classifier(train, test, tickets, emb, ClassifyConfig(min_class_count=5), seed=0)
    assert set(result.metrics["per_class"]) == {"causes", "clones", "duplicate"}
    assert result.metrics["macro_f1"] > result.metrics["majority_macro_f1"]
    assert result.confusion.sum() == len(test)
    _reloaded_predicts_what_was_scored(result, test, tickets, emb)


def _reloaded_predicts_what_was_scored(
    result: ClassifierResult, test: list[Link], tickets: dict[str, Ticket], emb: Embeddings
) -> None:
    """The JSON model, applied with `predict`, gives exactly the predictions the metrics were computed
    from."""
    saved = json.loads(dumps_model(result.model))
    reloaded = predict(saved, pair_features(test, tickets, emb))
    truth = [link.relation for link in test]
    assert (confusion_matrix(truth, reloaded, labels=result.classes) == result.confusion).all()


def test_two_relations_reload_through_the_binary_branch() -> None:
    links, tickets, emb = _world()
    two = [link for link in links if link.relation in ("causes", "duplicate")]
    result = train_classifier(two[::2], two[1::2], tickets, emb, ClassifyConfig(min_class_count=5), seed=0)
    assert len(result.model["coef"]) == 1, "binary logistic regression stores one row of weights"
    assert result.metrics["macro_f1"] > result.metrics["majority_macro_f1"]
    _reloaded_predicts_what_was_scored(result, two[1::2], tickets, emb)


def test_rare_classes_are_dropped_and_reported() -> None:
    links, tickets, emb = _world()
    links.append(Link("causes-0-a", "clones-0-a", "blocks"))  # a relation with one member
    result = train_classifier(links, links[:10], tickets, emb, ClassifyConfig(min_class_count=5), seed=0)
    assert result.metrics["dropped_classes"] == {"blocks": 1}
    assert "blocks" not in result.classes


def test_absent_test_class_does_not_crash() -> None:
    links, tickets, emb = _world()
    only_causes = [link for link in links if link.relation == "causes"][:5]
    result = train_classifier(
        links, only_causes, tickets, emb, ClassifyConfig(min_class_count=5, smote=False), seed=0
    )
    assert result.metrics["per_class"]["clones"]["support"] == 0


def test_fewer_than_two_classes_is_refused() -> None:
    links, tickets, emb = _world()
    with pytest.raises(ValueError, match="at least 2 relations"):
        train_classifier(links[:30], links[:5], tickets, emb, ClassifyConfig(min_class_count=5), seed=0)
