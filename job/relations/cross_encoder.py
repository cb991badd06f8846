"""Name the relation of two tickets with a cross-encoder: one transformer reads both tickets together.

Two frozen embeddings cannot see which sentence of one ticket answers which sentence of the other; a
cross-encoder attends across both (Lüders, Pietz and Maalej, "Automated Detection of Typed Links in
Issue Trackers", RE 2022, fine-tune BERT the same way). A sentence-transformers `CrossEncoder` with one
output per relation is fine-tuned with `CrossEncoderTrainer` on the train split's links, validated on
the val split's links after every epoch (the epoch with the best val macro-F1 is kept), and scored on
the test split's links.

Direction. A pair is read in the order given: (source, target). For the symmetric relations both
orders are training rows with the same label, so the order the tickets come in does not matter to
them. For the directed ones (config.DIRECTED_RELATIONS: blocks, causes, depends) only the given order
is a row: `blocks` means "the first ticket blocks the second", and a consumer asking about the other
direction swaps the tickets. Each side starts with its project and creation day, the metadata that
carries direction in Jira (a regression is filed after its cause).

Saved as safetensors + the transformer's config (with the label map) under `cross_encoder/`, next to
`model.json` (format, classes, direction rule, max length): no pickle. Checkpoints, SIGTERM (save and
stop, exit 75), progress logging and bf16 on CUDA follow the train step's rules (job/embedding/trainer.py).
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from job.config import DIRECTED_RELATIONS, JobConfig
from job.data.records import Link, Ticket
from job.embedding.model import pick_device, refuse_pickle_weights
from job.errors import ConfigError, RunStateError
from job.relations.base import FitInputs, Fitted, RelationClassifier
from job.relations.methods import RELATION_CLASSIFIERS

CROSS_ENCODER_FORMAT = RELATION_CLASSIFIERS["cross_encoder"].format
WEIGHTS_DIR = "cross_encoder"  # inside the classifier folder
CHECKPOINTS = "classifier-checkpoints"  # in the run's storage, apart from the train step's
PREDICT_BATCH_SIZE = 32


def pair_side(ticket: Ticket) -> str:
    """One side of a pair as the cross-encoder reads it: project and creation day, then the text."""
    header = " ".join(part for part in (ticket.project, (ticket.created or "")[:10]) if part)
    return f"{header}\n{ticket.text}" if header else ticket.text


@dataclass
class PairRows:
    """(first, second, class index) rows for the trainer."""

    sentence1: list[str] = field(default_factory=list)
    sentence2: list[str] = field(default_factory=list)
    label: list[int] = field(default_factory=list)


def pair_rows(
    links: list[Link], tickets: dict[str, Ticket], classes: list[str], both_orders: bool
) -> PairRows:
    """Rows for `links` in their given order; with `both_orders`, the symmetric relations read backwards
    too."""
    rows = PairRows()
    for link in links:
        a, b, label = (
            pair_side(tickets[link.source]),
            pair_side(tickets[link.target]),
            classes.index(link.relation),
        )
        orders = [(a, b)]
        if both_orders and link.relation not in DIRECTED_RELATIONS:
            orders.append((b, a))
        for first, second in orders:
            rows.sentence1.append(first)
            rows.sentence2.append(second)
            rows.label.append(label)
    return rows


def cap_rows(rows: PairRows, max_rows: int | None, seed: int) -> PairRows:
    """A seeded random sample of at most `max_rows` rows (classify.cross_encoder.max_train_rows)."""
    if max_rows is None or len(rows.label) <= max_rows:
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows.label)), max_rows))
    return PairRows(
        [rows.sentence1[i] for i in keep], [rows.sentence2[i] for i in keep], [rows.label[i] for i in keep]
    )


def balanced_class_weights(labels: list[int], n_classes: int) -> list[float]:
    """Loss weight per class, inversely proportional to its rows (scikit-learn's 'balanced' rule), so a
    rare relation counts as much in the loss as `relates`, which has ten times its links."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(float)
    return [len(labels) / (n_classes * c) if c else 0.0 for c in counts]


@dataclass
class CrossEncoderResult:
    model_dir: Path
    test_probabilities: np.ndarray  # one row per test link, columns in class order
    predictions: list[str]  # test links, in order
    val_history: list[dict[str, Any]] = field(default_factory=list)
    best_val_macro_f1: float | None = None
    global_step: int = 0
    train_seconds: float = 0.0
    n_train_rows: int = 0
    precision: str = "fp32"
    resumed_from: str | None = None


def _validation_evaluator(rows: PairRows, classes: list[str], batch_size: int) -> Any:
    from sentence_transformers.base.evaluation.evaluator import BaseEvaluator
    from sklearn.metrics import f1_score

    class RelationF1Evaluator(BaseEvaluator):
        """Val macro-F1 over the relation classes: what picks the epoch that is kept."""

        def __init__(self) -> None:
            super().__init__()
            self.primary_metric = "macro_f1"

        def __call__(
            self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1
        ) -> dict[str, float]:
            scores = model.predict(
                list(zip(rows.sentence1, rows.sentence2, strict=True)),
                batch_size=batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
            predicted = np.asarray(scores).reshape(len(rows.label), -1).argmax(axis=1)
            macro = f1_score(
                rows.label, predicted, labels=list(range(len(classes))), average="macro", zero_division=0
            )
            return self.prefix_name_to_metrics({"macro_f1": float(macro)}, "val")

    return RelationF1Evaluator()


def new_cross_encoder(
    start_model: str, classes: list[str], max_length: int, device: str | None = None
) -> Any:
    """A CrossEncoder with one output per class on top of `start_model` (a saved sentence-transformers
    model or transformer); its label map is written into the transformer's config."""
    from sentence_transformers.cross_encoder import CrossEncoder

    if Path(start_model).is_dir():
        refuse_pickle_weights(Path(start_model))
    config = {"id2label": dict(enumerate(classes)), "label2id": {c: i for i, c in enumerate(classes)}}
    try:
        model = CrossEncoder(
            start_model, num_labels=len(classes), device=device or pick_device(), config_kwargs=config
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot load model {start_model!r} for the cross-encoder: {exc}".splitlines()[0]
        ) from exc
    model.max_seq_length = min(max_length, _position_limit(model) or max_length)
    return model


def _position_limit(model: Any) -> int | None:
    config = getattr(getattr(model, "model", None), "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    return positions if isinstance(positions, int) and positions > 0 else None


def train_cross_encoder(
    start_model: str,
    classes: list[str],
    train_links: list[Link],
    val_links: list[Link],
    test_links: list[Link],
    tickets: dict[str, Ticket],
    cfg: JobConfig,
    work_dir: Path,
    store: Any,
    log: Any,
    stop: threading.Event,
    stamp: str = "",
) -> CrossEncoderResult:
    """Fine-tune a cross-encoder on `train_links`, keep the epoch best on `val_links`, predict `test_links`.

    `store` is the run's storage (checkpoints go under classifier-checkpoints/; a rerun resumes from
    the newest complete one). A set `stop` saves a checkpoint at the end of the current step and
    raises Interrupted.
    """
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import CrossEntropyLoss

    from job.embedding.trainer import (
        StorageAndProgress,
        choose_precision,
        seed_everything,
        shared_arguments,
        train_resumably,
    )

    ce, seed = cfg.classify.cross_encoder, cfg.train.seed
    seed_everything(seed)
    precision = choose_precision(cfg.train.precision)
    train_rows = cap_rows(pair_rows(train_links, tickets, classes, both_orders=True), ce.max_train_rows, seed)
    val_rows = pair_rows(val_links, tickets, classes, both_orders=False)
    model = new_cross_encoder(start_model, classes, ce.max_length)
    weights = None
    if cfg.classify.class_weight == "balanced":
        weights = torch.tensor(
            balanced_class_weights(train_rows.label, len(classes)), dtype=torch.float32, device=model.device
        )
    loss = CrossEntropyLoss(model, weight=weights)
    select_best = bool(val_rows.label)
    log.info(
        "training cross-encoder",
        train_rows=len(train_rows.label),
        val_links=len(val_rows.label),
        classes=classes,
        epochs=ce.epochs,
        batch_size=ce.batch_size,
        max_length=model.max_seq_length,
        device=str(model.device),
        precision=precision,
        class_weights=[round(float(w), 3) for w in weights.tolist()] if weights is not None else None,
    )
    output_dir = work_dir / CHECKPOINTS
    steps_per_epoch = max(1, -(-len(train_rows.label) // ce.batch_size))
    args = CrossEncoderTrainingArguments(
        **shared_arguments(
            output_dir,
            epochs=ce.epochs,
            batch_size=ce.batch_size,
            eval_batch_size=PREDICT_BATCH_SIZE,
            learning_rate=ce.learning_rate,
            warmup_ratio=ce.warmup_ratio,
            seed=seed,
            precision=precision,
            select_best=select_best,
            best_metric="eval_val_macro_f1",
            logging_steps=max(1, min(50, steps_per_epoch // 4)),
            group_by_length=True,
        ),
        eval_strategy="epoch" if select_best else "no",
        save_strategy="epoch",
    )
    trainer = CrossEncoderTrainer(
        model=model,
        args=args,
        loss=loss,
        train_dataset=Dataset.from_dict(vars(train_rows)),
        evaluator=_validation_evaluator(val_rows, classes, PREDICT_BATCH_SIZE) if select_best else None,
        callbacks=[
            StorageAndProgress(store, log, stop, prefix=CHECKPOINTS, what="train cross-encoder", stamp=stamp)
        ],
    )
    checkpoint, seconds = train_resumably(
        trainer, store, output_dir, log, stop, required=False, prefix=CHECKPOINTS, what="classifier training"
    )
    model_dir = work_dir / "classifier"
    save_cross_encoder(trainer.model, classes, model_dir)
    history = [
        {"epoch": h.get("epoch"), "step": h["step"], "val_macro_f1": h["eval_val_macro_f1"]}
        for h in trainer.state.log_history
        if "eval_val_macro_f1" in h
    ]
    probabilities = cross_encoder_probabilities(trainer.model, test_links, tickets)
    return CrossEncoderResult(
        model_dir=model_dir,
        test_probabilities=probabilities,
        predictions=[classes[i] for i in probabilities.argmax(axis=1)],
        val_history=history,
        best_val_macro_f1=trainer.state.best_metric,
        global_step=trainer.state.global_step,
        train_seconds=round(seconds, 3),
        n_train_rows=len(train_rows.label),
        precision=precision,
        resumed_from=checkpoint.name if checkpoint else None,
    )


def save_cross_encoder(model: Any, classes: list[str], folder: Path) -> None:
    """`folder/model.json` (what predict needs to know) and the weights in `folder/cross_encoder/`."""
    folder.mkdir(parents=True, exist_ok=True)
    # No generated card: sentence-transformers' quotes training rows (ticket text). The run's card is the
    # job's.
    model.save_pretrained(str(folder / WEIGHTS_DIR), safe_serialization=True, create_model_card=False)
    (folder / WEIGHTS_DIR / "README.md").unlink(missing_ok=True)
    descriptor = {
        "format": CROSS_ENCODER_FORMAT,
        "classes": classes,
        "weights": WEIGHTS_DIR,
        "directed_relations": [c for c in classes if c in DIRECTED_RELATIONS],
        "max_length": int(model.max_seq_length),
        "pair_order": "source first; directed relations read source -> target",
    }
    (folder / "model.json").write_text(json.dumps(descriptor, indent=1))


def load_cross_encoder(folder: Path, descriptor: dict[str, Any], device: str | None = None) -> Any:
    """The saved cross-encoder of a classifier folder (safetensors only), in eval mode."""
    from sentence_transformers.cross_encoder import CrossEncoder

    weights = folder / descriptor["weights"]
    refuse_pickle_weights(weights)
    model = CrossEncoder(str(weights), device=device or pick_device(), local_files_only=True)
    model.max_seq_length = int(descriptor["max_length"])
    labels = [model.config.id2label[i] for i in range(model.num_labels)]
    if labels != descriptor["classes"]:
        raise ConfigError(
            f"classifier {folder}: the weights' labels {labels} differ from model.json's classes"
        )
    return model.eval()


def cross_encoder_probabilities(model: Any, links: list[Link], tickets: dict[str, Ticket]) -> np.ndarray:
    """Softmax probabilities, one row per (source, target) pair, columns in class order."""
    return pair_probabilities(model, [(tickets[k.source], tickets[k.target]) for k in links])


def pair_probabilities(model: Any, pairs: list[tuple[Ticket, Ticket]]) -> np.ndarray:
    import torch

    if not pairs:
        return np.zeros((0, model.num_labels), dtype=np.float32)
    with torch.inference_mode():
        scores = model.predict(
            [(pair_side(a), pair_side(b)) for a, b in pairs],
            batch_size=PREDICT_BATCH_SIZE,
            apply_softmax=True,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
    return np.asarray(scores, dtype=np.float32).reshape(len(pairs), -1)


class CrossEncoderClassifier(RelationClassifier):
    """classify.method cross_encoder: `train_cross_encoder` from the fine-tuned bi-encoder or model.base
    (classify.cross_encoder.start_from), saved as `save_cross_encoder` writes it; it reads both tickets
    itself, so predict needs nothing else of the run."""

    def __init__(self, classes: list[str], saved_in: Path | None = None, model: Any = None) -> None:
        self.classes = list(classes)
        self.saved_in = saved_in  # training saves the kept epoch here
        self.model = model  # None until loaded

    @classmethod
    def fit(cls, inputs: FitInputs) -> Fitted:
        from job.embedding.trainer import discard_stale_checkpoints

        links, log = inputs.links, inputs.log
        ce = inputs.cfg.classify.cross_encoder
        start = str(inputs.finetuned_model) if ce.start_from == "finetuned" else inputs.base_model()
        stamp = inputs.checkpoint_stamp()
        discarded = discard_stale_checkpoints(inputs.store, stamp, log, CHECKPOINTS)
        inputs.checkpointing.set()
        try:
            result = train_cross_encoder(
                start,
                links.classes,
                links.train,
                links.val,
                links.test,
                inputs.tickets,
                inputs.cfg,
                inputs.work_dir,
                inputs.store,
                log,
                inputs.stop,
                stamp=stamp,
            )
        finally:
            inputs.checkpointing.clear()
        best = result.best_val_macro_f1
        log.info(
            "cross-encoder trained",
            steps=result.global_step,
            seconds=result.train_seconds,
            best_val_macro_f1=None if best is None else round(best, 4),
        )
        info = {
            "cross_encoder": {
                k: v
                for k, v in vars(result).items()
                if k not in ("model_dir", "predictions", "test_probabilities")
            },
            "discarded_checkpoint": discarded,
        }
        return Fitted(
            cls(links.classes, saved_in=result.model_dir),
            result.predictions,
            {"best_val_macro_f1": result.best_val_macro_f1},
            info,
        )

    def save(self, folder: Path) -> None:
        import shutil

        if self.saved_in is None:
            save_cross_encoder(self.model, self.classes, folder)
        elif folder.resolve() != self.saved_in.resolve():
            shutil.copytree(self.saved_in, folder, dirs_exist_ok=True)

    @classmethod
    def check(cls, descriptor: dict[str, Any], folder: Path) -> None:
        path = folder / "model.json"
        classes, weights = descriptor.get("classes"), descriptor.get("weights")
        length = descriptor.get("max_length")
        if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
            raise RunStateError(f"{path}: classes: expected a list of relation names")
        inside = (
            isinstance(weights, str)
            and weights
            and not Path(weights).is_absolute()
            and (folder / weights).resolve().is_relative_to(folder.resolve())
        )
        if not inside:
            raise RunStateError(f"{path}: weights: expected a folder inside {folder}")
        if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= 8192:
            raise RunStateError(f"{path}: max_length: expected a whole number of tokens in [1, 8192]")

    @classmethod
    def load(
        cls, folder: Path, descriptor: dict[str, Any], embedding_model_dir: Path | None, device: str | None
    ) -> CrossEncoderClassifier:
        return cls(list(descriptor["classes"]), model=load_cross_encoder(folder, descriptor, device))

    def predict_proba(self, pairs: list[tuple[Ticket, Ticket]]) -> np.ndarray:
        if self.model is None:
            raise RunStateError("the cross-encoder predicts once loaded from its saved folder")
        return pair_probabilities(self.model, pairs)
