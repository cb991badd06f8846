"""The relation classifier methods, one table entry each, behind one interface (`classify.method`).

A method is a `RelationClassifier`: `fit` trains it on a run's relation links and names the test links'
relations (the classify step scores every method the same way, job/relations/classify.py `relation_metrics`);
`save` writes it into a folder that the classify step publishes as the run's classifier/; `load` reads
that folder back, and `predict_proba` gives relation probabilities of new (source, target) ticket
pairs (job/relations/predict.py). A saved classifier's model.json names its `format`; predict picks the
table entry by that format, never by an if/else.

Adding a method is its class (in its own module) and one entry in RELATION_CLASSIFIERS; config validates
`classify.method` against this table, the classify step and predict look everything else up here.
This module imports nothing of the job: config validates against it, and every method imports config.
The interface and the lookup of a method's class are in job/relations/base.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassifierMethod:
    """A table entry: the format its model.json carries, whether predict needs the run's embedding model
    too, a line for the configuration reference, and its class by module path."""

    format: str
    needs_embedding_model: bool
    summary: str
    implementation: str  # "module:Class", imported on first use (job/relations/base.py classifier_class)


RELATION_CLASSIFIERS: dict[str, ClassifierMethod] = {
    "logistic": ClassifierMethod(
        "ticket-relation-logreg/1",
        True,
        "regression over two frozen embeddings (minutes on a CPU)",
        "job.relations.classify:LogisticClassifier",
    ),
    "cross_encoder": ClassifierMethod(
        "ticket-relation-cross-encoder/1",
        False,
        "a transformer fine-tuned on both tickets together (wants a GPU)",
        "job.relations.cross_encoder:CrossEncoderClassifier",
    ),
}


def method_of_format(saved_format: object) -> str | None:
    """The name of the method whose classifiers are saved as `saved_format` (None: no method is)."""
    return next(
        (name for name, method in RELATION_CLASSIFIERS.items() if method.format == saved_format), None
    )


def describe_methods() -> str:
    return "; ".join(f"{name}: {method.summary}" for name, method in RELATION_CLASSIFIERS.items())
