"""Fine-tune with sentence-transformers' SentenceTransformerTrainer.

Checkpoints go to the run's storage as they are written (a `COMPLETE` marker last, so a
half-uploaded checkpoint is never resumed from); a rerun of the same run id, or `--resume`,
continues from the newest complete one with optimizer, scheduler and RNG state. SIGTERM asks
the trainer to save at the end of the current step and stop; the step then exits 75.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
from transformers import TrainerCallback

from job.config import JobConfig, TrainConfig
from job.data.pairs import Pair, TitleBody, Triplet
from job.embedding.losses import LOSSES, PAIR_LOSSES
from job.embedding.model import encode_batch_size, pick_device, write_portable_module_paths
from job.embedding.trainer import (
    CHECKPOINTS,
    StorageAndProgress,
    choose_precision,
    seed_everything,
    shared_arguments,
    train_resumably,
)
from job.errors import InputError
from job.storage import Store


@dataclass
class TrainExamples:
    """Scored pair rows (for a pair loss)."""

    sentence1: list[str]
    sentence2: list[str]
    score: list[float]


@dataclass
class TripletExamples:
    """(anchor, positive, hard negative) rows (for the ranking loss)."""

    anchor: list[str]
    positive: list[str]
    negative: list[str]


@dataclass
class TrainResult:
    model_dir: Path
    global_step: int
    epochs: float
    loss_curve: list[dict[str, Any]] = field(default_factory=list)
    val_history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    precision: str = "fp32"
    train_seconds: float = 0.0
    pairs_per_second: float = 0.0
    resumed_from: str | None = None
    n_examples: int = 0
    ranking_mini_batch: int | None = None  # the cached ranking loss's (None: the plain loss)
    model: Any = field(default=None, repr=False)  # the trained model in memory (what model_dir holds)


def examples_from_pairs(
    pairs: list[Pair], texts: dict[str, str], loss: str, pair_loss: str, positive_threshold: float
) -> TrainExamples:
    """Pair rows for the pair objective of `loss` (none for mnrl, which ranks triplets only).

    The row budget (`train.max_pairs`) was spent in prepare, so every given pair is used.
    """
    objective = LOSSES[loss].pair_objective(pair_loss)
    chosen = [] if objective is None else list(pairs)
    s1 = [texts[p.a] for p in chosen]
    s2 = [p.text_b if p.text_b is not None else texts[p.b] for p in chosen]
    if objective is not None and PAIR_LOSSES[objective].binary_labels:
        scores = [1.0 if p.score >= positive_threshold else 0.0 for p in chosen]
    else:
        scores = [p.score for p in chosen]
    return TrainExamples(s1, s2, scores)


def triplet_examples(
    triplets: list[Triplet], texts: dict[str, str], objective: str = "duplicate"
) -> TripletExamples:
    """The triplets of one ranking objective (duplicate: pairs.triplet_relations; related:
    pairs.related_relations)."""
    chosen = [t for t in triplets if t.objective == objective]
    return TripletExamples(
        [texts[t.anchor] for t in chosen],
        [texts[t.positive] for t in chosen],
        [texts[t.negative] for t in chosen],
    )


@dataclass
class TitleBodyExamples:
    """(title, description) rows of the in-domain objective: in-batch negatives only."""

    anchor: list[str]
    positive: list[str]

    @classmethod
    def of(cls, rows: list[TitleBody]) -> TitleBodyExamples:
        return cls([r.title for r in rows], [r.body for r in rows])


@dataclass
class RankingSets:
    """The ranking objectives' rows: duplicate triplets, and the optional related and title/body ones."""

    triplets: TripletExamples
    related: TripletExamples = field(default_factory=lambda: TripletExamples([], [], []))
    title_body: TitleBodyExamples = field(default_factory=lambda: TitleBodyExamples([], []))


@dataclass
class TrainingRows:
    """Every row train fits on (the pair objective's, the ranking objectives') and the val pairs it
    selects the best checkpoint on."""

    pairs: TrainExamples
    ranking: RankingSets
    val: TrainExamples

    def counts(self) -> dict[str, int]:
        return {
            "pair_rows": len(self.pairs.sentence1),
            "triplet_rows": len(self.ranking.triplets.anchor),
            "related_rows": len(self.ranking.related.anchor),
            "title_body_rows": len(self.ranking.title_body.anchor),
            "val_pairs": len(self.val.sentence1),
        }


def training_rows(
    cfg: JobConfig,
    texts: dict[str, str],
    train_pairs: list[Pair],
    val_pairs: list[Pair],
    triplets: list[Triplet],
    title_body: list[TitleBody],
) -> TrainingRows:
    """The rows of prepare's train split for train.loss; InputError when there is nothing to train on."""
    threshold = cfg.evaluate.positive_threshold
    rows = TrainingRows(
        examples_from_pairs(train_pairs, texts, cfg.train.loss, cfg.train.pair_loss, threshold),
        RankingSets(
            triplet_examples(triplets, texts),
            triplet_examples(triplets, texts, "related"),
            TitleBodyExamples.of(title_body),
        ),
        examples_from_pairs(val_pairs, texts, "cosine", "cosine", threshold),
    )
    counts = rows.counts()
    if not any(counts[k] for k in ("pair_rows", "triplet_rows", "related_rows", "title_body_rows")):
        raise InputError(
            f"no training rows for train.loss={cfg.train.loss}: the train split has no links of "
            f"pairs.triplet_relations {cfg.pairs.triplet_relations} (mnrl) or no pairs"
        )
    return rows


class UniqueTextSimilarityEvaluator(EmbeddingSimilarityEvaluator):
    """Val Spearman during training, encoding each distinct text once.

    Val pairs share tickets (a ticket with three links sits in three positive pairs and
    several negatives), and the parent class encodes both sides of every pair.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._vectors: np.ndarray | None = None
        self._rows: dict[str, int] = {}

    def __call__(self, model: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        unique = list(dict.fromkeys([*self.sentences1, *self.sentences2]))
        self._vectors = super().embed_inputs(model, unique)
        self._rows = {text: row for row, text in enumerate(unique)}
        try:
            return super().__call__(model, *args, **kwargs)
        finally:
            self._vectors, self._rows = None, {}

    def embed_inputs(self, model: Any, sentences: Any, **kwargs: Any) -> np.ndarray:
        if self._vectors is None or isinstance(sentences, str) or kwargs:
            return super().embed_inputs(model, sentences, **kwargs)
        return self._vectors[[self._rows[text] for text in sentences]]


def pair_loss(model: Any, name: str) -> Any:
    return PAIR_LOSSES[name].factory(model)


# On a CPU at 256 tokens the cached ranking loss, 8 texts at a time, took 0.88x-1.12x the plain loss's step
# time over three measurements and 4 GB less memory; at 64 and 128 tokens it took 1.3x-1.5x
# (bench/results/cpu-batches-2026-12-05.md). "auto" turns it on where a batch holds more tokens than
# CPU_CACHE_ABOVE_TOKENS, CPU_MINI_BATCH_TOKENS at a time.
CPU_CACHE_ABOVE_TOKENS = 8192
CPU_MINI_BATCH_TOKENS = 2048
TEXTS_PER_RANKING_ROW = 3  # anchor, positive, mined negative


def ranking_mini_batch(
    setting: int | str | None, device: str, batch_size: int, max_seq_length: int
) -> int | None:
    """The cached ranking loss's mini-batch for `train.mnrl_mini_batch_size`, or None for the plain loss."""
    if setting != "auto":
        return setting if isinstance(setting, int) else None
    if device != "cpu" or batch_size * TEXTS_PER_RANKING_ROW * max_seq_length <= CPU_CACHE_ABOVE_TOKENS:
        return None
    return max(1, CPU_MINI_BATCH_TOKENS // max_seq_length)


def ranking_loss(model: Any, mini_batch_size: int | None, gather_across_devices: bool) -> Any:
    """MultipleNegativesRankingLoss: each anchor must rank its positive above its hard negative
    and every other text in the batch. The cached variant reaches large batches in fixed memory;
    with `gather_across_devices` (DDP) the negatives of every device count."""
    from sentence_transformers.sentence_transformer import losses

    if mini_batch_size:
        return losses.CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=mini_batch_size, gather_across_devices=gather_across_devices
        )
    return losses.MultipleNegativesRankingLoss(model, gather_across_devices=gather_across_devices)


def weighted(loss: Any, weight: float) -> Any:
    """`loss` scaled by `weight` (1: as it is)."""
    return loss if weight == 1.0 else _weighted_loss_class()(loss, weight)


@functools.cache
def _weighted_loss_class() -> Any:
    import torch

    class WeightedLoss(torch.nn.Module):
        """A ranking loss times a weight: one objective of several counts less (a related ticket is a weaker
        positive than a duplicate). The trainer finds the model through `model`."""

        def __init__(self, loss: Any, weight: float) -> None:
            super().__init__()
            self.loss, self.weight = loss, weight

        @property
        def model(self) -> Any:
            return self.loss.model

        @property
        def citation(self) -> str:
            return str(getattr(self.loss, "citation", ""))

        def get_config_dict(self) -> dict[str, Any]:
            return {
                "weight": self.weight,
                **(self.loss.get_config_dict() if hasattr(self.loss, "get_config_dict") else {}),
            }

        def forward(self, features: Any, labels: Any) -> Any:
            return self.weight * self.loss(features, labels)

    return WeightedLoss


def training_sets(
    model: Any,
    pairs: TrainExamples,
    ranking: RankingSets,
    tc: TrainConfig,
    distributed: bool,
    mini_batch: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The datasets and a loss for each (sentence-transformers' multi-dataset training); `mini_batch`: the
    ranking losses' (ranking_mini_batch)."""
    from datasets import Dataset

    rows: dict[str, Any] = {
        name: vars(examples)
        for name, examples in (
            ("triplets", ranking.triplets),
            ("related", ranking.related),
            ("title_body", ranking.title_body),
        )
        if examples.anchor
    }
    objective = LOSSES[tc.loss].pair_objective(tc.pair_loss)
    if pairs.sentence1:
        if objective is None:  # prepare spends such a budget on triplets only (pairs.budget)
            raise ValueError(f"train.loss {tc.loss} trains on triplets only, but scored pairs were given")
        rows["pairs"] = vars(pairs)
    # Under DDP the batches of a multi-dataset epoch are dealt to the ranks in turn, so one rank may rank
    # triplets while another scores pairs in the same step: a gather across devices would then wait
    # forever for a partner. Gather only when every batch comes from one ranking dataset.
    gather = distributed and len(rows) == 1 and "pairs" not in rows
    weights = {"triplets": 1.0, "related": tc.related_weight, "title_body": tc.title_body_weight}
    datasets = {name: Dataset.from_dict(columns) for name, columns in rows.items()}
    losses = {
        name: weighted(ranking_loss(model, mini_batch, gather), weights[name])
        for name in rows
        if name != "pairs"
    }
    if "pairs" in rows and objective is not None:
        losses["pairs"] = pair_loss(model, objective)
    return datasets, losses


def train_model(
    cfg: JobConfig,
    model: Any,
    train: TrainExamples,
    ranking: RankingSets,
    val: TrainExamples,
    work_dir: Path,
    store: Store,
    log: Any,
    stop: threading.Event,
    resume: bool,
    extra_callbacks: Sequence[TrainerCallback] = (),
    stamp: str = "",
) -> TrainResult:
    """Run the trainer; `store` is the run's storage (for checkpoints). Returns the best model's dir.

    `extra_callbacks` lets a caller observe the steps (the GPU benchmark times them).
    """
    import torch
    from sentence_transformers.sentence_transformer import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    tc = cfg.train
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    precision = choose_precision(tc.precision)
    seed_everything(tc.seed)
    mini_batch = ranking_mini_batch(
        tc.mnrl_mini_batch_size, pick_device(), tc.batch_size, int(model.max_seq_length)
    )
    datasets, losses = training_sets(model, train, ranking, tc, distributed, mini_batch)
    eval_batch = encode_batch_size(model, cfg.model.encode_batch_size)
    n_rows = sum(len(d) for d in datasets.values())
    # Validating during training only serves to pick the best checkpoint. One epoch saved once
    # leaves nothing to pick, and the evaluate step scores val anyway: skip it then.
    select_best = tc.epochs > 1 or tc.checkpoint_every_steps is not None
    evaluator = (
        UniqueTextSimilarityEvaluator(
            val.sentence1,
            val.sentence2,
            val.score,
            name="val",
            batch_size=eval_batch,
            write_csv=False,
        )
        if select_best
        else None
    )
    strategy = "steps" if tc.checkpoint_every_steps else "epoch"
    output_dir = work_dir / CHECKPOINTS
    args = SentenceTransformerTrainingArguments(
        **shared_arguments(
            output_dir,
            epochs=tc.epochs,
            batch_size=tc.batch_size,
            eval_batch_size=eval_batch,
            learning_rate=tc.learning_rate,
            warmup_ratio=tc.warmup_ratio,
            seed=tc.seed,
            precision=precision,
            select_best=select_best,
            best_metric="eval_val_spearman_cosine",
            logging_steps=max(1, min(50, n_rows // tc.batch_size // 4 or 1)),
            group_by_length=tc.group_by_length,
        ),
        eval_strategy=strategy if select_best else "no",
        save_strategy=strategy,
        eval_steps=tc.checkpoint_every_steps or 500,
        save_steps=tc.checkpoint_every_steps or 500,
        torch_compile=tc.compile,
        # torchrun without GPUs (the CPU DDP test) needs gloo and use_cpu, else accelerate does not
        # treat the processes as one distributed job; on GPUs the defaults (nccl) are right.
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        use_cpu=distributed and not torch.cuda.is_available(),
        multi_dataset_batch_sampler="proportional",  # every row of each dataset once per epoch
        prompts=cfg.model.text_prefix or None,
    )
    callback = StorageAndProgress(store, log, stop, stamp=stamp)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=datasets,
        loss=losses,
        evaluator=evaluator,
        callbacks=[callback, *extra_callbacks],
    )
    checkpoint, seconds = train_resumably(
        trainer, store, output_dir, log, stop, required=resume, prefix=CHECKPOINTS, what="training"
    )
    if trainer.state.global_step == 0:
        # A silent no-op would publish the base model as if it were trained (seen: 8 rows per dataset,
        # batch 8, two processes under torchrun).
        raise InputError(
            "training took no optimizer step: every process got less than one batch of each "
            "training set; raise train.max_pairs or lower train.batch_size or the number of processes"
        )
    model_dir = work_dir / "model"
    if trainer.is_world_process_zero():
        # No generated card: it quotes training rows (ticket text). The job writes its own (job/runs/card.py).
        trainer.model.save_pretrained(str(model_dir), safe_serialization=True, create_model_card=False)
        write_portable_module_paths(model_dir)
    history = trainer.state.log_history
    done_steps = trainer.state.global_step - (int(checkpoint.name.split("-")[1]) if checkpoint else 0)
    return TrainResult(
        model_dir=model_dir,
        global_step=trainer.state.global_step,
        epochs=float(trainer.state.epoch or 0),
        loss_curve=[
            {"step": h["step"], "epoch": h.get("epoch"), "loss": h["loss"]} for h in history if "loss" in h
        ],
        val_history=[
            {k: v for k, v in h.items() if k.startswith("eval_") or k in ("step", "epoch")}
            for h in history
            if "eval_val_spearman_cosine" in h
        ],
        best_metric=trainer.state.best_metric,
        precision=precision,
        train_seconds=round(seconds, 3),
        pairs_per_second=round(done_steps * tc.batch_size / seconds, 3) if seconds > 0 else 0.0,
        resumed_from=checkpoint.name if checkpoint else None,
        n_examples=n_rows,
        ranking_mini_batch=mini_batch,
        model=trainer.model,
    )
