"""Relation probabilities for pairs of tickets, from a run's saved classifier: what a consumer calls.

Works for both classify methods and needs none of the training code: the logistic classifier is
applied to features of the run's fine-tuned embeddings (so it needs the run's `model/` too), the
cross-encoder reads both tickets itself. A pair is (source, target): for the directed relations
(blocks, causes, depends) a probability means "source <relation> target".

    from job.data import Ticket
    from job.predict import load_predictor
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

from job.classify import LOGISTIC_FORMAT, check_logistic_model, logistic_probabilities, pair_features
from job.config import JobConfig
from job.cross_encoder import CROSS_ENCODER_FORMAT, load_cross_encoder, pair_probabilities
from job.data import Link, Ticket
from job.errors import ConfigError, InputError, RunStateError
from job.evaluate import Embeddings
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
            raise RunStateError(f"the {self.method} classifier gave no finite probabilities: its weights are damaged")
        return {c: float(p) for c, p in zip(self.classes, row, strict=True)}


def read_descriptor(classifier_dir: Path) -> dict[str, Any]:
    """classifier/model.json, checked: a known format, class names, weights that fit, and (cross-encoder)
    a weights folder inside the classifier folder."""
    path = classifier_dir / "model.json"
    try:
        descriptor = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no classifier here (expected model.json written by the classify step)") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: cannot read the classifier description ({type(exc).__name__})") from None
    if not isinstance(descriptor, dict) or descriptor.get("format") not in (LOGISTIC_FORMAT, CROSS_ENCODER_FORMAT):
        raise ConfigError(f"{path}: expected format {LOGISTIC_FORMAT} or {CROSS_ENCODER_FORMAT}")
    if descriptor["format"] == LOGISTIC_FORMAT:
        check_logistic_model(descriptor, str(path))
    else:
        _check_cross_encoder(descriptor, classifier_dir, path)
    return descriptor


def _check_cross_encoder(descriptor: dict[str, Any], classifier_dir: Path, path: Path) -> None:
    classes, weights, length = descriptor.get("classes"), descriptor.get("weights"), descriptor.get("max_length")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
        raise RunStateError(f"{path}: classes: expected a list of relation names")
    inside = isinstance(weights, str) and weights and not Path(weights).is_absolute() and \
        (classifier_dir / weights).resolve().is_relative_to(classifier_dir.resolve())
    if not inside:
        raise RunStateError(f"{path}: weights: expected a folder inside {classifier_dir}")
    if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= 8192:
        raise RunStateError(f"{path}: max_length: expected a whole number of tokens in [1, 8192]")


def load_predictor(classifier_dir: Path, embedding_model_dir: Path | None = None,
                   device: str | None = None) -> RelationPredictor:
    """The classifier saved in `classifier_dir` (a run's classifier/ folder, downloaded).

    `embedding_model_dir` (the run's model/ folder) is needed by the logistic method only.
    """
    descriptor = read_descriptor(classifier_dir)
    if descriptor["format"] == CROSS_ENCODER_FORMAT:
        model = load_cross_encoder(classifier_dir, descriptor, device)
        return RelationPredictor("cross_encoder", list(descriptor["classes"]),
                                 lambda pairs: pair_probabilities(model, pairs))
    if embedding_model_dir is None:
        raise ConfigError(f"{classifier_dir}: the logistic classifier needs the run's embedding model (model/) too")
    from job.model import load_model

    encoder = load_model(str(embedding_model_dir), int(descriptor.get("embedding_max_seq_length", 256)), device)
    return RelationPredictor("logistic", list(descriptor["classes"]),
                             lambda pairs: _logistic_probabilities(descriptor, encoder, pairs))


def _logistic_probabilities(descriptor: dict[str, Any], encoder: Any, pairs: list[tuple[Ticket, Ticket]]) -> np.ndarray:
    from job.log import get_logger
    from job.model import encode

    if not pairs:
        return np.zeros((0, len(descriptor["classes"])))
    # Ids of our own: the consumer's ticket ids may repeat or be missing.
    tickets: dict[str, Ticket] = {}
    links = []
    for number, (source, target) in enumerate(pairs):
        a, b = f"source-{number}", f"target-{number}"
        tickets[a] = Ticket(a, source.text, source.category, source.project, source.created)
        tickets[b] = Ticket(b, target.text, target.category, target.project, target.created)
        links.append(Link(a, b, "unknown"))
    ids = list(tickets)
    vectors = encode(encoder, [tickets[t].text for t in ids], 32, get_logger(step="predict"), "encode for predict")
    return logistic_probabilities(descriptor, pair_features(links, tickets, Embeddings(ids, vectors)))


def open_run_predictor(cfg: JobConfig, run_id: str, work_dir: Path) -> RelationPredictor:
    """The classifier of run `run_id` under `output.uri` (local or S3), downloaded into `work_dir`."""
    from job.artifacts import RunDir, check_run_id

    run = RunDir(open_store(cfg.output.uri.rstrip("/") + "/" + check_run_id(run_id), cfg.storage), run_id)
    purpose = f"cannot predict with run {run_id}"
    if f"{CLASSIFIER}/model.json" not in run.manifest_records(purpose):
        raise RunStateError(f"run {run_id} has no classifier (classify has not run, or it was skipped: "
                            "see its classifier/metrics.json)")
    run.download_listed(CLASSIFIER, work_dir / CLASSIFIER, purpose)  # only what the manifest vouches for
    descriptor = read_descriptor(work_dir / CLASSIFIER)
    embedding_dir = None
    if descriptor["format"] == LOGISTIC_FORMAT:
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
        raise InputError(f"{side} ticket: created: expected an ISO 8601 time such as 2013-10-21T18:39:02+00:00") from None
