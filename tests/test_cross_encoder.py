"""The cross-encoder relation classifier: rows by direction, balanced loss, training on the sample data
with the best val epoch kept, and `predict` after a reload (local and S3) giving what training scored."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from job.config import load_config
from job.data.records import Link, Ticket
from job.log import get_logger
from job.relations.classify import choose_relations
from job.relations.cross_encoder import (
    CrossEncoderResult,
    balanced_class_weights,
    cap_rows,
    pair_rows,
    pair_side,
    train_cross_encoder,
)
from job.relations.predict import load_predictor
from job.storage import LocalStore, Store, download_dir, upload_dir
from tests.conftest import OFFLINE_MODEL, SampleSplit
from tests.test_card import files_quoting

TICKETS = {
    t: Ticket(t, f"text of {t}", project="HDFS", created=f"2014-03-0{n}T10:00:00+00:00")
    for n, t in enumerate("abcd", start=1)
}


def test_symmetric_relations_train_both_ways_directed_ones_only_as_given() -> None:
    links = [
        Link("a", "b", "relates"),
        Link("c", "d", "blocks"),
        Link("b", "c", "causes"),
        Link("d", "a", "clones"),
    ]
    classes = ["blocks", "causes", "clones", "relates"]
    rows = pair_rows(links, TICKETS, classes, both_orders=True)
    got = [
        (first.split("\n")[1], second.split("\n")[1], classes[label])
        for first, second, label in zip(rows.sentence1, rows.sentence2, rows.label, strict=True)
    ]
    assert got == [
        ("text of a", "text of b", "relates"),
        ("text of b", "text of a", "relates"),
        ("text of c", "text of d", "blocks"),
        ("text of b", "text of c", "causes"),
        ("text of d", "text of a", "clones"),
        ("text of a", "text of d", "clones"),
    ]
    as_given = pair_rows(links, TICKETS, classes, both_orders=False)
    assert len(as_given.label) == len(links), "val and test are scored once, in the given order"


def test_each_side_carries_project_and_creation_day() -> None:
    assert pair_side(TICKETS["a"]) == "HDFS 2014-03-01\ntext of a"
    assert pair_side(Ticket("x", "only text")) == "only text"


def test_balanced_weights_make_each_class_weigh_the_same_in_the_loss() -> None:
    labels = [0] * 30 + [1] * 6 + [2] * 3
    weights = balanced_class_weights(labels, 4)
    totals = [weights[k] * labels.count(k) for k in range(3)]
    assert totals[0] == pytest.approx(totals[1]) == pytest.approx(totals[2])
    assert weights[3] == 0.0, "a class without rows gets no weight (and no division by zero)"


def test_row_cap_is_a_seeded_sample() -> None:
    rows = pair_rows([Link("a", "b", "relates")] * 10, TICKETS, ["relates"], both_orders=True)
    capped = cap_rows(rows, 5, seed=1)
    assert len(capped.label) == 5 and cap_rows(rows, 5, seed=1) == capped
    assert cap_rows(rows, None, seed=1) is rows


@dataclass
class Trained:
    result: CrossEncoderResult
    classes: list[str]
    val: list[Link]
    test: list[Link]
    tickets: dict[str, Ticket]


@pytest.fixture(scope="module")
def trained(sample_split: SampleSplit, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """MiniLM (real weights) cut to 32 tokens, two epochs of 4 steps on a sample of the sample's train
    links."""
    from job.embedding.model import resolve_model_path

    work = tmp_path_factory.mktemp("cross-encoder")
    cfg = load_config(
        environ={},
        cli_overrides={
            "data.tickets": "t.jsonl",
            "output.uri": str(work / "out"),
            "classify.method": "cross_encoder",
            "classify.cross_encoder.epochs": 2,
            "classify.cross_encoder.batch_size": 16,
            "classify.cross_encoder.max_length": 32,
            "classify.cross_encoder.learning_rate": 1e-4,
            "classify.cross_encoder.max_train_rows": 64,
            "train.seed": 7,
        },
    ).config
    tickets, links = sample_split.tickets, sample_split.links
    chosen = choose_relations(links["train"], links["test"], cfg.classify.min_class_count, links["val"])
    start = resolve_model_path(OFFLINE_MODEL, cfg.storage, work / "cache")
    result = train_cross_encoder(
        start,
        chosen.classes,
        chosen.train,
        chosen.val,
        chosen.test,
        tickets,
        cfg,
        work,
        LocalStore(work / "store"),
        get_logger(step="test"),
        threading.Event(),
    )
    return Trained(result, chosen.classes, chosen.val, chosen.test, tickets)


@pytest.mark.slow
def test_trains_on_the_sample_keeps_the_best_val_epoch_and_saves_without_pickle(trained: Trained) -> None:
    result = trained.result
    assert len(trained.classes) >= 4 and result.n_train_rows == 64
    scores = [h["val_macro_f1"] for h in result.val_history]
    assert len(scores) == 2 and result.best_val_macro_f1 == max(scores)
    saved = load_predictor(result.model_dir, device="cpu")
    val = saved.probabilities([(trained.tickets[k.source], trained.tickets[k.target]) for k in trained.val])
    kept = f1_score(
        [k.relation for k in trained.val],
        [trained.classes[i] for i in val.argmax(axis=1)],
        labels=trained.classes,
        average="macro",
        zero_division=0,
    )
    assert kept == pytest.approx(max(scores)), "the saved model is the best val epoch's"
    assert result.test_probabilities.shape == (len(trained.test), len(trained.classes))
    assert np.allclose(result.test_probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert len(set(result.predictions)) > 1, "a trained model does not name one class for every pair"
    descriptor = json.loads((result.model_dir / "model.json").read_text())
    assert descriptor["classes"] == trained.classes
    assert set(descriptor["directed_relations"]) <= {"blocks", "causes", "depends"}
    files = [p.name for p in result.model_dir.rglob("*") if p.is_file()]
    assert "model.safetensors" in files and not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    config = json.loads((result.model_dir / "cross_encoder" / "config.json").read_text())
    assert config["id2label"] == {str(i): c for i, c in enumerate(trained.classes)}
    texts = [t.text.split("\n")[0] for t in trained.tickets.values() if len(t.text.split("\n")[0]) > 20]
    assert files_quoting(result.model_dir, texts) == {}, "no ticket text ships with the classifier"


@pytest.mark.slow
def test_predict_after_a_reload_through_storage_gives_the_scored_probabilities(
    trained: Trained, store: Store, tmp_path: Path
) -> None:
    upload_dir(store, trained.result.model_dir, "classifier")
    local = download_dir(store, "classifier", tmp_path / "classifier")
    predictor = load_predictor(local, device="cpu")
    assert predictor.method == "cross_encoder" and predictor.classes == trained.classes
    pairs = [(trained.tickets[k.source], trained.tickets[k.target]) for k in trained.test]
    assert np.allclose(predictor.probabilities(pairs), trained.result.test_probabilities, atol=1e-5)
    first = trained.test[0]
    one = predictor.predict_pair(trained.tickets[first.source], trained.tickets[first.target])
    assert list(one) == trained.classes and sum(one.values()) == pytest.approx(1.0, abs=1e-5)
