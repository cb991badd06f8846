"""The relation classifier methods, one table entry each, behind one interface (`classify.method`).

A method is a `RelationClassifier`: `fit` trains it on a run's relation links and names the test links'
relations (the classify step scores every method the same way, job/classify.py `relation_metrics`);
`save` writes it into a folder that the classify step publishes as the run's classifier/; `load` reads
that folder back, and `predict_proba` gives relation probabilities of new (source, target) ticket pairs
(job/predict.py). A saved classifier's model.json names its `format`; predict picks the table entry by
that format, never by an if/else.

Adding a method is its class (in its own module) and one entry in RELATION_CLASSIFIERS; config validates
`classify.method` against this table, the classify step and predict look everything else up here.
The entries import their code only when used: config reads this table, and the methods import config.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from job.classify import RelationLinks
    from job.config import JobConfig
    from job.data import Ticket
    from job.evaluate import Embeddings
    from job.storage import Store


@dataclass
class FitInputs:
    """What the classify step hands every method; each takes what it needs."""

    links: RelationLinks  # the relations with enough train links, and their train, val and test links
    tickets: dict[str, Ticket]
    cfg: JobConfig
    embeddings: Callable[[list[str]], Embeddings]  # the fine-tuned embeddings of these ticket ids
    finetuned_model: Path  # the train step's model folder
    base_model: Callable[[], str]  # model.base as a local folder (found or downloaded on the first call)
    work_dir: Path  # the run's scratch
    store: Store  # the run's storage: checkpoints, for a method that resumes
    checkpoint_stamp: Callable[[], str]  # what the step's checkpoints are made from (config checksum, inputs)
    log: Any
    stop: threading.Event  # SIGTERM: save a checkpoint and stop
    checkpointing: threading.Event  # set while a method writes checkpoints that a SIGTERM should wait for


@dataclass
class Fitted:
    """A trained classifier, what it predicted for `links.test` (in order), and what it adds to the step's
    metrics.json (`metrics`) and step record (`info`)."""

    classifier: RelationClassifier
    test_predictions: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class RelationClassifier(ABC):
    """One classify.method. `classes` are the relation names, in the column order of `predict_proba`."""

    classes: list[str]

    @classmethod
    @abstractmethod
    def fit(cls, inputs: FitInputs) -> Fitted:
        """Train on `inputs.links.train` (and val, where the method selects on it); predict
        `inputs.links.test`."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write the classifier into `folder` (published as the run's classifier/): a model.json with this
        method's `format`, and whatever else it needs; no pickle."""

    @classmethod
    @abstractmethod
    def check(cls, descriptor: dict[str, Any], folder: Path) -> None:
        """Refuse (RunStateError naming folder/model.json and the field) a saved model.json `load` cannot
        apply: it came from storage and may have been edited."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, descriptor: dict[str, Any], embedding_model_dir: Path | None,
             device: str | None) -> RelationClassifier:
        """The classifier saved in `folder` (its checked model.json is `descriptor`); `embedding_model_dir` is
        the run's model/ for a method whose entry `needs_embedding_model`."""

    @abstractmethod
    def predict_proba(self, pairs: list[tuple[Ticket, Ticket]]) -> np.ndarray:
        """Probabilities of a loaded classifier: one row per (source, target) pair, columns in `classes`
        order."""


@dataclass(frozen=True)
class ClassifierMethod:
    """A table entry: the format its model.json carries, whether predict needs the run's embedding model
    too, a line for the configuration reference, and its class (imported on first use)."""

    format: str
    needs_embedding_model: bool
    summary: str
    implementation: Callable[[], type[RelationClassifier]]


def _logistic() -> type[RelationClassifier]:
    from job.classify import LogisticClassifier

    return LogisticClassifier


def _cross_encoder() -> type[RelationClassifier]:
    from job.cross_encoder import CrossEncoderClassifier

    return CrossEncoderClassifier


RELATION_CLASSIFIERS: dict[str, ClassifierMethod] = {
    "logistic": ClassifierMethod("ticket-relation-logreg/1", True,
                                 "regression over two frozen embeddings (minutes on a CPU)", _logistic),
    "cross_encoder": ClassifierMethod("ticket-relation-cross-encoder/1", False,
                                      "a transformer fine-tuned on both tickets together (wants a GPU)",
                                      _cross_encoder),
}


def method_of_format(saved_format: object) -> str | None:
    """The name of the method whose classifiers are saved as `saved_format` (None: no method is)."""
    return next((name for name, method in RELATION_CLASSIFIERS.items() if method.format == saved_format),
                None)


def describe_methods() -> str:
    return "; ".join(f"{name}: {method.summary}" for name, method in RELATION_CLASSIFIERS.items())
