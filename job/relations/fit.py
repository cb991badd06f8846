"""The classify step's training: classify.method (job/relations/methods.py) fitted on a run's links,
saved and published as classifier/, and scored the same way for every method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from job.profile import phase
from job.relations.base import FitInputs, RelationLinks, classifier_class
from job.relations.classify import relation_confusion, relation_metrics
from job.runs.context import RunContext, base_model_path
from job.runs.models import TrainedModel, checkpoint_stamp, finetuned_embeddings
from job.runs.prepared import PreparedData
from job.runs.steps import CLASSIFY
from job.storage import FileRecord, upload_dir


@dataclass
class PublishedClassifier:
    metrics: dict[
        str, Any
    ]  # classifier/metrics.json: the same scores for every method, plus the method's own
    confusion: np.ndarray
    info: dict[str, Any]  # what the method adds to the step record
    files: list[FileRecord]


def fit_and_publish(
    ctx: RunContext, prepared: PreparedData, trained: TrainedModel, links: RelationLinks, log: Any
) -> PublishedClassifier:
    inputs = FitInputs(
        links=links,
        tickets=prepared.tickets,
        cfg=ctx.cfg,
        embeddings=lambda ids: finetuned_embeddings(ctx, prepared, trained, ids, log),
        finetuned_model=trained.local_dir,
        base_model=lambda: base_model_path(ctx),
        work_dir=ctx.work_dir,
        store=ctx.run.store,
        checkpoint_stamp=lambda: checkpoint_stamp(ctx, CLASSIFY),
        log=log,
        stop=ctx.stop,
        checkpointing=ctx.checkpointing,
    )
    with phase("fit"):  # the embeddings it asks for are timed as encode
        fitted = classifier_class(ctx.cfg.classify.method).fit(inputs)
    folder = ctx.work_dir / "classifier"
    fitted.classifier.save(folder)
    files = upload_dir(ctx.run.store, folder, "classifier")
    metrics = {**relation_metrics(links, fitted.test_predictions, ctx.cfg.classify.method), **fitted.metrics}
    return PublishedClassifier(
        metrics, relation_confusion(links, fitted.test_predictions), fitted.info, files
    )
