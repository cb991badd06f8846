"""Relation probabilities for pairs of tickets, from a run's saved classifier: what a consumer calls.

Works for every classify method (job/relations/methods.py: the saved format picks the loader) and
needs none of the training code: the logistic classifier is applied to features of the run's fine-tuned
embeddings (so it needs the run's `model/` too), the cross-encoder reads both tickets itself. A pair is
(source, target): for the directed relations (blocks, causes, depends) a probability means
"source <relation> target".

    from job.data.records import Ticket
    from job.relations.predict import load_predictor
    predictor = load_predictor(Path("run/classifier"), embedding_model_dir=Path("run/model"))
    predictor.predict_pair(Ticket("a", "NPE in the namenode ..."), Ticket("b", "namenode crashes ..."))
    # {'blocks': 0.03, 'causes': 0.41, ...}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from job.config import JobConfig
from job.data.records import Ticket
from job.errors import ConfigError, InputError, RunStateError
from job.relations.base import classifier_class
from job.relations.methods import RELATION_CLASSIFIERS, method_of_format
from job.storage import open_store

CLASSIFIER = "classifier"
EMBEDDING_MODEL = "model"


@dataclass
class RelationPredictor:
    """A loaded classifier: `probabilities` scores many pairs at once, columns in `classes` order."""

    method: str
    classes: list[str]
    score: Callable[[list[tuple[Ticket, Ticket]]], np.ndarray]

    def probabilities(self, pairs: list[tuple[Ticket, Ticket]]) -> np.ndarray:
        return self.score(pairs)

    def predict_pair(self, source: Ticket, target: Ticket) -> dict[str, float]:
        row = self.score([(source, target)])[0]
        if not np.all(np.isfinite(row)):
            raise RunStateError(
                f"the {self.method} classifier gave no finite probabilities: its weights are damaged"
            )
        return {c: float(p) for c, p in zip(self.classes, row, strict=True)}


def read_descriptor(classifier_dir: Path) -> dict[str, Any]:
    """classifier/model.json, checked: a format of one of the methods (job/relations/methods.py), and
    what that method's `check` asks of it (class names, weights that fit, files inside the folder)."""
    path = classifier_dir / "model.json"
    try:
        descriptor = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no classifier here (expected model.json written by the classify step)"
        ) from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: cannot read the classifier description ({type(exc).__name__})") from None
    method = method_of_format(descriptor.get("format")) if isinstance(descriptor, dict) else None
    if method is None:
        formats = " or ".join(entry.format for entry in RELATION_CLASSIFIERS.values())
        raise ConfigError(f"{path}: expected format {formats}")
    classifier_class(method).check(descriptor, classifier_dir)
    return descriptor


def load_predictor(
    classifier_dir: Path, embedding_model_dir: Path | None = None, device: str | None = None
) -> RelationPredictor:
    """The classifier saved in `classifier_dir` (a run's classifier/ folder, downloaded), loaded by the method
    its model.json's format names.

    `embedding_model_dir` (the run's model/ folder) is needed by the methods that encode with it (logistic).
    """
    descriptor = read_descriptor(classifier_dir)
    method = method_of_format(descriptor["format"])
    assert method is not None  # read_descriptor refused any other format
    entry = RELATION_CLASSIFIERS[method]
    if entry.needs_embedding_model and embedding_model_dir is None:
        raise ConfigError(
            f"{classifier_dir}: the {method} classifier needs the run's embedding model (model/) too"
        )
    classifier = classifier_class(method).load(classifier_dir, descriptor, embedding_model_dir, device)
    return RelationPredictor(method, list(classifier.classes), classifier.predict_proba)


def open_run_predictor(cfg: JobConfig, run_id: str, work_dir: Path) -> RelationPredictor:
    """The classifier of run `run_id` under `output.uri` (local or S3), downloaded into `work_dir`."""
    from job.runs.artifacts import RunDir, check_run_id

    run = RunDir(open_store(cfg.output.uri.rstrip("/") + "/" + check_run_id(run_id), cfg.storage), run_id)
    purpose = f"cannot predict with run {run_id}"
    if f"{CLASSIFIER}/model.json" not in run.manifest_records(purpose):
        raise RunStateError(
            f"run {run_id} has no classifier (classify has not run, or it was skipped: "
            "see its classifier/metrics.json)"
        )
    run.download_listed(CLASSIFIER, work_dir / CLASSIFIER, purpose)  # only what the manifest vouches for
    method = method_of_format(read_descriptor(work_dir / CLASSIFIER)["format"])
    embedding_dir = None
    if method is not None and RELATION_CLASSIFIERS[method].needs_embedding_model:
        embedding_dir = run.download_listed(EMBEDDING_MODEL, work_dir / EMBEDDING_MODEL, purpose)
    return load_predictor(work_dir / CLASSIFIER, embedding_dir)


def predict_run_pair(cfg: JobConfig, run_id: str, source: Ticket, target: Ticket) -> dict[str, Any]:
    """{"method", "probabilities": {relation: p}} for one pair, with run `run_id`'s classifier
    (downloaded into a temporary folder under runtime.work_dir, removed after)."""
    import tempfile

    for ticket, side in ((source, "source"), (target, "target")):
        check_text(ticket, side)
        check_created(ticket, side)
    with tempfile.TemporaryDirectory(prefix="finetune-predict-", dir=cfg.runtime.work_dir) as scratch:
        predictor = open_run_predictor(cfg, run_id, Path(scratch))
        return {"method": predictor.method, "probabilities": predictor.predict_pair(source, target)}


def check_text(ticket: Ticket, side: str) -> None:
    """Text as prepare accepts it: not empty, valid UTF-8 (a terminal can pass undecodable bytes through)."""
    try:
        ticket.text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{side} ticket: text: expected UTF-8 text") from None
    if not ticket.text.strip():
        raise InputError(f"{side} ticket: text: expected a title or a description, got nothing")


def check_created(ticket: Ticket, side: str) -> None:
    """A creation time must be ISO 8601 (the value itself is not repeated: it was typed by a user)."""
    from datetime import datetime

    if ticket.created is None:
        return
    try:
        datetime.fromisoformat(ticket.created.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"{side} ticket: created: expected an ISO 8601 time such as 2013-10-21T18:39:02+00:00"
        ) from None
