"""The classifier table (job/relations/methods.py): a method is one class plus one entry. A toy method
registered here, and nowhere else, is accepted by config, trained and published by the classify step of a
real run, and loaded back by predict from the format it saved."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from job.config import ClassifyConfig, JobConfig, load_config
from job.data.records import Ticket
from job.errors import ConfigError, RunStateError
from job.relations.base import FitInputs, Fitted, RelationClassifier, classifier_class
from job.relations.methods import RELATION_CLASSIFIERS, ClassifierMethod
from job.runs.records import StepRecord
from tests.conftest import TINY, SampleSplit, merged, write_config

CENTROID_FORMAT = "test-nearest-centroid/1"


def _pair_vectors(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.hstack([u * v, np.abs(u - v)])


def _softmax_of_closeness(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    closeness = -np.linalg.norm(x[:, None, :] - centroids[None, :, :], axis=2) * 10.0
    shifted = np.exp(closeness - closeness.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class NearestCentroid(RelationClassifier):
    """The relation whose mean pair vector (u*v, |u-v| of the two embeddings) is nearest."""

    def __init__(
        self, classes: list[str], centroids: np.ndarray, max_seq_length: int, encoder: Any = None
    ) -> None:
        self.classes, self.centroids, self.encoder = classes, centroids, encoder
        self.max_seq_length = max_seq_length

    @classmethod
    def fit(cls, inputs: FitInputs) -> Fitted:
        links = inputs.links
        emb = inputs.embeddings(sorted({t for k in links.train + links.test for t in (k.source, k.target)}))

        def vectors(chosen: list[Any]) -> np.ndarray:
            return _pair_vectors(emb.of([k.source for k in chosen]), emb.of([k.target for k in chosen]))

        train = vectors(links.train)
        centroids = np.stack(
            [train[[k.relation == c for k in links.train]].mean(axis=0) for c in links.classes]
        )
        fitted = cls(links.classes, centroids, inputs.cfg.model.max_seq_length)
        probabilities = (
            _softmax_of_closeness(vectors(links.test), centroids)
            if links.test
            else np.zeros((0, len(links.classes)))
        )
        return Fitted(
            fitted,
            [links.classes[i] for i in probabilities.argmax(axis=1)],
            metrics={"centroid_dim": int(centroids.shape[1])},
            info={
                "test_pairs": [[k.source, k.target] for k in links.test],
                "test_probabilities": probabilities.round(6).tolist(),
            },
        )

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.json").write_text(
            json.dumps(
                {
                    "format": CENTROID_FORMAT,
                    "classes": self.classes,
                    "centroids": self.centroids.tolist(),
                    "embedding_max_seq_length": self.max_seq_length,
                }
            )
        )

    @classmethod
    def check(cls, descriptor: dict[str, Any], folder: Path) -> None:
        if len(descriptor.get("centroids") or []) != len(descriptor.get("classes") or []):
            raise RunStateError(f"{folder / 'model.json'}: centroids: expected one per class")

    @classmethod
    def load(
        cls, folder: Path, descriptor: dict[str, Any], embedding_model_dir: Path | None, device: str | None
    ) -> NearestCentroid:
        from job.embedding.model import load_model

        assert embedding_model_dir is not None
        length = descriptor["embedding_max_seq_length"]
        return cls(
            descriptor["classes"],
            np.array(descriptor["centroids"]),
            length,
            load_model(str(embedding_model_dir), length, device),
        )

    def predict_proba(self, pairs: list[tuple[Ticket, Ticket]]) -> np.ndarray:
        from job.embedding.model import encode
        from job.log import get_logger

        texts = [t.text for pair in pairs for t in pair]
        vectors = encode(self.encoder, texts, 32, get_logger(step="test"), "encode")
        return _softmax_of_closeness(_pair_vectors(vectors[0::2], vectors[1::2]), self.centroids)


CENTROID = ClassifierMethod(
    CENTROID_FORMAT,
    True,
    "nearest centroid of the pair vectors",
    "tests.test_relation_classifiers:NearestCentroid",
)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RELATION_CLASSIFIERS, "centroid", CENTROID)


def test_every_method_is_a_classifier_with_a_format_of_its_own() -> None:
    formats = [method.format for method in RELATION_CLASSIFIERS.values()]
    assert len(set(formats)) == len(formats) == len(RELATION_CLASSIFIERS)
    for name in RELATION_CLASSIFIERS:
        assert issubclass(classifier_class(name), RelationClassifier), name
        assert ClassifyConfig(method=name).method == name


def test_config_takes_its_methods_from_the_table(registered: None) -> None:
    assert JobConfig.model_validate({"classify": {"method": "centroid"}}).classify.method == "centroid"
    with pytest.raises(
        ValidationError, match=r"expected one of logistic, cross_encoder, centroid \(job/relations/methods"
    ):
        ClassifyConfig(method="svm")


def test_predict_picks_the_loader_by_the_saved_format(registered: None, tmp_path: Path) -> None:
    from job.relations.predict import load_predictor, read_descriptor

    NearestCentroid(["a", "b"], np.zeros((2, 3)), 32).save(tmp_path / "classifier")
    assert read_descriptor(tmp_path / "classifier")["format"] == CENTROID_FORMAT
    with pytest.raises(ConfigError, match="the centroid classifier needs the run's embedding model"):
        load_predictor(tmp_path / "classifier")
    (tmp_path / "classifier" / "model.json").write_text(json.dumps({"format": "nobody's/1"}))
    with pytest.raises(
        ConfigError,
        match=f"expected format ticket-relation-logreg/1 or "
        f"ticket-relation-cross-encoder/1 or {CENTROID_FORMAT}",
    ):
        read_descriptor(tmp_path / "classifier")


@dataclass
class CentroidRun:
    cfg: JobConfig
    run_dir: Path
    record: StepRecord


@pytest.fixture(scope="module")
def centroid_run(shared_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentroidRun]:
    """The whole job in this process (tiny training) with classify.method: centroid."""
    from job import pipeline
    from job.runs import context

    work = tmp_path_factory.mktemp("centroid-run")
    config = write_config(
        work / "config.json",
        merged(
            TINY,
            {
                "data": {
                    "tickets": str(shared_sample / "tickets.jsonl"),
                    "links": str(shared_sample / "links.jsonl"),
                },
                "output": {"uri": str(work / "runs")},
                "pairs": {"mine_hard_negatives": False},
                "classify": {"method": "centroid"},
            },
        ),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(RELATION_CLASSIFIERS, "centroid", CENTROID)
        loaded = load_config(str(config), environ={})
        ctx = context.open_run(loaded, "centroid")
        with context.exclusive(ctx, "run"):
            pipeline.run_step(ctx, "run")
        record = ctx.run.step_record("classify")
        assert record is not None
        yield CentroidRun(loaded.config, work / "runs" / "centroid", record)


@pytest.mark.slow
def test_the_classify_step_trains_scores_and_publishes_a_registered_method(centroid_run: CentroidRun) -> None:
    metrics = json.loads((centroid_run.run_dir / "classifier" / "metrics.json").read_text())
    assert metrics["method"] == "centroid" and metrics["centroid_dim"] == 2 * 384
    assert {"macro_f1", "per_class", "majority_macro_f1", "n_train", "n_test", "classes"} <= set(metrics)
    assert metrics["macro_f1"] is not None
    assert metrics["n_test"] == len(centroid_run.record.info["test_probabilities"]) > 0
    saved = json.loads((centroid_run.run_dir / "classifier" / "model.json").read_text())
    assert saved["format"] == CENTROID_FORMAT and saved["classes"] == metrics["classes"]
    manifest = (centroid_run.run_dir / "manifest.json").read_text()
    assert "classifier/model.json" in manifest and "plots/confusion_matrix.png" in manifest


@pytest.mark.slow
def test_predict_loads_a_registered_method_from_a_finished_run(
    centroid_run: CentroidRun, sample_split: SampleSplit, tmp_path: Path
) -> None:
    """predict (the run's classifier and model/ downloaded as the manifest lists them) gives the probabilities
    the step scored the test links with: the same embeddings, encoded again from the texts."""
    from job.relations.predict import open_run_predictor

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(RELATION_CLASSIFIERS, "centroid", CENTROID)
        predictor = open_run_predictor(centroid_run.cfg, "centroid", tmp_path)
    tickets, info = sample_split.tickets, centroid_run.record.info
    got = predictor.probabilities(
        [(tickets[source], tickets[target]) for source, target in info["test_pairs"]]
    )
    assert predictor.method == "centroid" and got.shape == (len(info["test_pairs"]), len(predictor.classes))
    assert np.allclose(got, np.array(info["test_probabilities"]), atol=1e-3)
