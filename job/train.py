"""Fine-tune with sentence-transformers' SentenceTransformerTrainer.

Checkpoints go to the run's storage as they are written (a `COMPLETE` marker last, so a
half-uploaded checkpoint is never resumed from); a rerun of the same run id, or `--resume`,
continues from the newest complete one with optimizer, scheduler and RNG state. SIGTERM asks
the trainer to save at the end of the current step and stop; the step then exits 75.
"""

from __future__ import annotations

import functools
import os
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers.base.sampler import DefaultBatchSampler
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
from transformers import PrinterCallback, TrainerCallback

from job.config import JobConfig, TrainConfig
from job.errors import InputError, Interrupted, RunStateError
from job.log import Progress
from job.losses import LOSSES, PAIR_LOSSES
from job.model import write_portable_module_paths
from job.pairs import Pair, TitleBody, Triplet
from job.storage import Store, download_dir, upload_dir

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"


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
    model: Any = field(default=None, repr=False)  # the trained model in memory (what model_dir holds)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (all CUDA devices) from one seed."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def examples_from_pairs(pairs: list[Pair], texts: dict[str, str], loss: str, pair_loss: str,
                        positive_threshold: float) -> TrainExamples:
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


def triplet_examples(triplets: list[Triplet], texts: dict[str, str], objective: str = "duplicate") -> TripletExamples:
    """The triplets of one ranking objective (duplicate: pairs.triplet_relations; related: pairs.related_relations)."""
    chosen = [t for t in triplets if t.objective == objective]
    return TripletExamples([texts[t.anchor] for t in chosen], [texts[t.positive] for t in chosen],
                           [texts[t.negative] for t in chosen])


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


def batch_sampler_for(group_by_length: bool) -> Any:
    """Batches of rows of similar length (`train.group_by_length`), and for the ranking losses without a text
    repeated in a batch (a repeat would be an in-batch "negative" that is the positive itself).
    A partial of a module-level function: the trainer pickles its arguments into checkpoints."""
    return functools.partial(_batch_sampler, group_by_length=group_by_length)


def _batch_sampler(dataset: Any, group_by_length: bool, **kwargs: Any) -> Any:
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    if "anchor" in dataset.column_names:
        return (LengthGroupedNoDuplicatesBatchSampler if group_by_length else NoDuplicatesBatchSampler)(dataset,
                                                                                                      **kwargs)
    return (LengthGroupedBatchSampler if group_by_length else DefaultBatchSampler)(dataset, **kwargs)


WINDOW_BATCHES = 50


def length_grouped_order(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[int]:
    """Row indices shuffled, then sorted by length inside windows of WINDOW_BATCHES batches: cut into batches in
    this order, each batch is nearly uniform in length while the windows keep the epoch random."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * WINDOW_BATCHES
    return [i for start in range(0, len(order), window)
            for i in sorted(order[start : start + window], key=lengths.__getitem__)]


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """Batches of pairs of similar length, in a seeded random order.

    Each side of a pair is padded to the longest text in its batch, so random batches of
    ticket texts (a title alone next to a 4,000-character stack trace) waste most of the
    compute on padding. The rows in `length_grouped_order` are batched and the batches shuffled
    again. Deterministic for (seed, epoch), so a resumed run skips exactly the batches it had
    already trained on.
    """

    def __init__(self, dataset: Any, batch_size: int, drop_last: bool, valid_label_columns: list[str] | None = None,
                 generator: Any = None, seed: int = 0) -> None:
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                         valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        self.lengths = [len(a) + len(b) for a, b in zip(dataset["sentence1"], dataset["sentence2"], strict=True)]

    def __iter__(self) -> Any:
        rng = random.Random(self.seed + self.epoch)
        order = length_grouped_order(self.lengths, self.batch_size, rng)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        rng.shuffle(batches)
        yield from batches

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full if self.drop_last or not rest else full + 1


class LengthGroupedNoDuplicatesBatchSampler(DefaultBatchSampler):
    """Ranking-loss batches of rows of similar length with no text twice in a batch.

    sentence-transformers' NoDuplicatesBatchSampler packs rows in random order; at 256 tokens a
    title-only row then pads to a stack trace's length. Here the rows go in `length_grouped_order`
    and are packed greedily: a row sharing a text with the batch waits, first in line, for the next
    one, so batches stay nearly uniform in length. The batches are shuffled; deterministic for (seed,
    epoch). Every row is used once per epoch.
    """

    def __init__(self, dataset: Any, batch_size: int, drop_last: bool, valid_label_columns: list[str] | None = None,
                 generator: Any = None, seed: int = 0) -> None:
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                         valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        skip = {"dataset_name", *(valid_label_columns or [])}
        rows = list(zip(*(dataset[c] for c in dataset.column_names if c not in skip), strict=True))
        self.texts = [frozenset(row) for row in rows]
        self.lengths = [sum(len(text) for text in row) for row in rows]
        self._packed_epoch: tuple[int, list[list[int]]] | None = None

    def __iter__(self) -> Any:
        yield from self._epoch_batches()

    def __len__(self) -> int:
        """Exact (the epoch's packing, cached): the multi-dataset sampler takes exactly len() batches."""
        return len(self._epoch_batches())

    def _epoch_batches(self) -> list[list[int]]:
        if self._packed_epoch is None or self._packed_epoch[0] != self.epoch:
            rng = random.Random(self.seed + self.epoch)
            batches = list(self._packed(length_grouped_order(self.lengths, self.batch_size, rng)))
            rng.shuffle(batches)
            self._packed_epoch = (self.epoch, batches)
        return self._packed_epoch[1]

    def _packed(self, order: list[int]) -> Any:
        waiting = deque(order)
        while waiting:
            batch: list[int] = []
            seen: set[str] = set()
            deferred: list[int] = []
            while waiting and len(batch) < self.batch_size:
                row = waiting.popleft()
                if self.texts[row] & seen:
                    deferred.append(row)
                    continue
                batch.append(row)
                seen |= self.texts[row]
            waiting.extendleft(reversed(deferred))
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch


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


def ranking_loss(model: Any, mini_batch_size: int | None, gather_across_devices: bool) -> Any:
    """MultipleNegativesRankingLoss: each anchor must rank its positive above its hard negative
    and every other text in the batch. The cached variant reaches large batches in fixed memory;
    with `gather_across_devices` (DDP) the negatives of every device count."""
    from sentence_transformers.sentence_transformer import losses

    if mini_batch_size:
        return losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch_size,
                                                         gather_across_devices=gather_across_devices)
    return losses.MultipleNegativesRankingLoss(model, gather_across_devices=gather_across_devices)


def choose_precision(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def latest_checkpoint(store: Store, prefix: str = CHECKPOINTS) -> str | None:
    """Newest checkpoint whose upload completed (its COMPLETE marker exists).

    Only folders named as the trainer names them (`checkpoint-<step>`) count; anything else in the
    folder (`checkpoint-abc`, copied in by hand) is not a checkpoint of this run and is skipped.
    """
    steps = []
    for key, _ in store.list_keys(f"{prefix}/"):
        parts = key.split("/")
        step = parts[1].removeprefix("checkpoint-") if len(parts) == 3 and parts[2] == COMPLETE else ""
        if step.isascii() and step.isdigit() and parts[1] != step:
            steps.append((int(step), parts[1]))
    return max(steps)[1] if steps else None


class StorageAndProgress(TrainerCallback):
    """TrainerCallback: logs progress, uploads each checkpoint under `prefix`, and honours a stop request.

    Used by every trainer of the job (the bi-encoder's, the cross-encoder classifier's)."""

    def __init__(self, store: Store, log: Any, stop: threading.Event, prefix: str = CHECKPOINTS,
                 what: str = "train", stamp: str = "") -> None:
        self.store, self.log, self.stop, self.prefix, self.what = store, log, stop, prefix, what
        self.stamp = stamp  # what the step is made from, in the COMPLETE marker (discard_stale_checkpoints)
        self.progress: Progress | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress = Progress(self.log, self.what, state.max_steps, unit="steps")
        self.progress.done = state.global_step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress:
            self.progress.update(1)
        if self.stop.is_set():
            self.log.warning("stop requested: saving a checkpoint and stopping", global_step=state.global_step)
            control.should_save = True
            control.should_training_stop = True

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stop.is_set():
            # Stopping mid-epoch ends the epoch loop, and the trainer would then run the epoch's val
            # evaluation (minutes on a CPU, past the pod's grace period) and save a second time.
            # The checkpoint was already saved at the step where the stop came.
            control.should_evaluate = False
            control.should_save = False

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.log.info("train loss", global_step=state.global_step, epoch=round(state.epoch or 0, 3),
                          loss=round(float(logs["loss"]), 5), learning_rate=logs.get("learning_rate"))

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kw: Any) -> None:
        if metrics:
            self.log.info("val metrics", global_step=state.global_step,
                          **{k: round(float(v), 5) for k, v in metrics.items() if isinstance(v, int | float)})

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        name = f"checkpoint-{state.global_step}"
        local = Path(args.output_dir) / name
        if not local.is_dir():
            return
        # sentence-transformers' generated card quotes training rows (ticket text); a checkpoint needs none.
        (local / "README.md").unlink(missing_ok=True)
        t0 = time.monotonic()
        upload_dir(self.store, local, f"{self.prefix}/{name}")
        self.store.write_bytes(f"{self.prefix}/{name}/{COMPLETE}", self.stamp.encode("utf-8"))
        for key, _ in self.store.list_keys(f"{self.prefix}/"):  # keep only the newest in storage
            old = key.split("/")[1]
            if old != name and key.endswith(f"/{COMPLETE}"):
                self.store.delete_prefix(f"{self.prefix}/{old}/")
        self.log.info("checkpoint saved", checkpoint=name, seconds=round(time.monotonic() - t0, 2))


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
            return {"weight": self.weight, **(self.loss.get_config_dict() if hasattr(self.loss, "get_config_dict") else {})}

        def forward(self, features: Any, labels: Any) -> Any:
            return self.weight * self.loss(features, labels)

    return WeightedLoss


def training_sets(model: Any, pairs: TrainExamples, ranking: RankingSets, tc: TrainConfig,
                  distributed: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The datasets and a loss for each (sentence-transformers' multi-dataset training)."""
    from datasets import Dataset

    rows: dict[str, Any] = {name: vars(examples) for name, examples in
                            (("triplets", ranking.triplets), ("related", ranking.related),
                             ("title_body", ranking.title_body)) if examples.anchor}
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
    losses = {name: weighted(ranking_loss(model, tc.mnrl_mini_batch_size, gather), weights[name])
              for name in rows if name != "pairs"}
    if "pairs" in rows and objective is not None:
        losses["pairs"] = pair_loss(model, objective)
    return datasets, losses


def train_model(cfg: JobConfig, model: Any, train: TrainExamples, ranking: RankingSets, val: TrainExamples,
                work_dir: Path, store: Store, log: Any, stop: threading.Event, resume: bool,
                extra_callbacks: Sequence[TrainerCallback] = (), stamp: str = "") -> TrainResult:
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
    datasets, losses = training_sets(model, train, ranking, tc, distributed)
    n_rows = sum(len(d) for d in datasets.values())
    # Validating during training only serves to pick the best checkpoint. One epoch saved once
    # leaves nothing to pick, and the evaluate step scores val anyway: skip it then.
    select_best = tc.epochs > 1 or tc.checkpoint_every_steps is not None
    evaluator = UniqueTextSimilarityEvaluator(val.sentence1, val.sentence2, val.score, name="val",
                                              batch_size=cfg.model.encode_batch_size,
                                              write_csv=False) if select_best else None
    strategy = "steps" if tc.checkpoint_every_steps else "epoch"
    output_dir = work_dir / CHECKPOINTS
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=tc.epochs,
        per_device_train_batch_size=tc.batch_size,
        per_device_eval_batch_size=cfg.model.encode_batch_size,
        learning_rate=tc.learning_rate,
        warmup_steps=tc.warmup_ratio,  # a float below 1 is a ratio of the total steps
        seed=tc.seed,
        data_seed=tc.seed,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        eval_strategy=strategy if select_best else "no",
        save_strategy=strategy,
        eval_steps=tc.checkpoint_every_steps or 500,
        save_steps=tc.checkpoint_every_steps or 500,
        save_total_limit=2,
        load_best_model_at_end=select_best,
        metric_for_best_model="eval_val_spearman_cosine" if select_best else None,
        greater_is_better=True,
        logging_steps=max(1, min(50, n_rows // tc.batch_size // 4 or 1)),
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        torch_compile=tc.compile,
        dataloader_pin_memory=precision != "fp32",
        # torchrun without GPUs (the CPU DDP test) needs gloo and use_cpu, else accelerate does not
        # treat the processes as one distributed job; on GPUs the defaults (nccl) are right.
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        use_cpu=distributed and not torch.cuda.is_available(),
        batch_sampler=batch_sampler_for(tc.group_by_length),
        multi_dataset_batch_sampler="proportional",  # every row of each dataset once per epoch
        prompts=cfg.model.text_prefix or None,
    )
    callback = StorageAndProgress(store, log, stop, stamp=stamp)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=datasets, loss=losses,
                                         evaluator=evaluator,
                                         callbacks=[callback, *extra_callbacks])
    checkpoint, seconds = train_resumably(trainer, store, output_dir, log, stop, required=resume,
                                          prefix=CHECKPOINTS, what="training")
    if trainer.state.global_step == 0:
        # A silent no-op would publish the base model as if it were trained (seen: 8 rows per dataset,
        # batch 8, two processes under torchrun).
        raise InputError("training took no optimizer step: every process got less than one batch of each "
                         "training set; raise train.max_pairs or lower train.batch_size or the number of processes")
    model_dir = work_dir / "model"
    if trainer.is_world_process_zero():
        # No generated card: it quotes training rows (ticket text). The job writes its own (job/card.py).
        trainer.model.save_pretrained(str(model_dir), safe_serialization=True, create_model_card=False)
        write_portable_module_paths(model_dir)
    history = trainer.state.log_history
    done_steps = trainer.state.global_step - (int(checkpoint.name.split("-")[1]) if checkpoint else 0)
    return TrainResult(
        model_dir=model_dir,
        global_step=trainer.state.global_step,
        epochs=float(trainer.state.epoch or 0),
        loss_curve=[{"step": h["step"], "epoch": h.get("epoch"), "loss": h["loss"]} for h in history if "loss" in h],
        val_history=[{k: v for k, v in h.items() if k.startswith("eval_") or k in ("step", "epoch")}
                     for h in history if "eval_val_spearman_cosine" in h],
        best_metric=trainer.state.best_metric,
        precision=precision,
        train_seconds=round(seconds, 3),
        pairs_per_second=round(done_steps * tc.batch_size / seconds, 3) if seconds > 0 else 0.0,
        resumed_from=checkpoint.name if checkpoint else None,
        n_examples=n_rows,
        model=trainer.model,
    )


def train_resumably(trainer: Any, store: Store, output_dir: Path, log: Any, stop: threading.Event, *,
                    required: bool, prefix: str, what: str) -> tuple[Path | None, float]:
    """Run a (SentenceTransformer or CrossEncoder) trainer from the newest checkpoint under `prefix`.

    Returns the checkpoint it resumed from and the seconds trained; raises Interrupted when `stop` was set
    (the callback has saved a checkpoint by then)."""
    trainer.remove_callback(PrinterCallback)  # it prints dicts to stdout, breaking the JSON log stream
    checkpoint = fetch_checkpoint(store, output_dir, log, required=required, prefix=prefix)
    t0 = time.monotonic()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.monotonic() - t0
    if stop.is_set():
        raise Interrupted(f"{what} stopped at step {trainer.state.global_step} on request; "
                          "the checkpoint is saved and a rerun with the same run id resumes from it")
    return checkpoint, seconds


def discard_stale_checkpoints(store: Store, stamp: str, log: Any, prefix: str = CHECKPOINTS) -> str | None:
    """Delete the checkpoints under `prefix` when the newest was made from another config or other inputs
    (its COMPLETE marker holds what its step was made from), so a resumed step never mixes old and new
    data. Returns the name of the discarded checkpoint, or None."""
    name = latest_checkpoint(store, prefix)
    if name is None or store.read_bytes(f"{prefix}/{name}/{COMPLETE}").decode("utf-8", "replace") == stamp:
        return None
    store.delete_prefix(f"{prefix}/")
    log.warning("checkpoint discarded: it was made from another config or other inputs", checkpoint=name)
    return name


def fetch_checkpoint(store: Store, output_dir: Path, log: Any, required: bool,
                     prefix: str = CHECKPOINTS) -> Path | None:
    """The newest complete checkpoint under `prefix`, downloaded into `output_dir` (None when there is none)."""
    name = latest_checkpoint(store, prefix)
    if name is None:
        if required:
            raise RunStateError("--resume was given but the run has no complete checkpoint to resume from")
        return None
    local = output_dir / name
    download_dir(store, f"{prefix}/{name}", local)
    (local / COMPLETE).unlink(missing_ok=True)
    log.info("resuming from checkpoint", checkpoint=name)
    return local
