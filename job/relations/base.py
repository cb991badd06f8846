"""What every relation classifier method is: the interface a `classify.method` implements, the links it is
fitted on, and the lookup from a method's name to its class.

The methods themselves are listed in job/relations/methods.py (a table that imports nothing of the job,
so config can validate against it); each entry names its class by module path, imported here on first use.
"""

from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from job.data.records import Link
from job.relations.methods import RELATION_CLASSIFIERS

if TYPE_CHECKING:
    import numpy as np

    from job.config import JobConfig
    from job.data.records import Ticket
    from job.evaluation.evaluate import Embeddings
    from job.storage import Store


@dataclass
class RelationLinks:
    """The links a relation classifier learns from and is scored on (only classes with enough train links)."""

    classes: list[str]
    train: list[Link]
    val: list[Link]
    test: list[Link]
    train_counts: Counter[str]
    dropped: dict[str, int]
    notes: list[str] = field(default_factory=list)


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
    def load(
        cls, folder: Path, descriptor: dict[str, Any], embedding_model_dir: Path | None, device: str | None
    ) -> RelationClassifier:
        """The classifier saved in `folder` (its checked model.json is `descriptor`); `embedding_model_dir` is
        the run's model/ for a method whose entry `needs_embedding_model`."""

    @abstractmethod
    def predict_proba(self, pairs: list[tuple[Ticket, Ticket]]) -> np.ndarray:
        """Probabilities of a loaded classifier: one row per (source, target) pair, columns in `classes`
        order."""


def classifier_class(method: str) -> type[RelationClassifier]:
    """The class of `method` (a RELATION_CLASSIFIERS name), imported from the module its entry names."""
    entry = RELATION_CLASSIFIERS[method]
    module, _, name = entry.implementation.partition(":")
    return cast("type[RelationClassifier]", getattr(importlib.import_module(module), name))
