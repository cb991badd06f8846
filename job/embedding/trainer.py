"""What both trainers of the job share (the bi-encoder's, job/embedding/train.py, and the cross-encoder
classifier's, job/relations/cross_encoder.py): the training arguments they have in common, precision,
seeding, batch samplers, checkpoints uploaded to the run's storage as they are written (a `COMPLETE` marker
last), progress in the log, stopping on request, and resuming from the newest complete checkpoint."""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers.base.sampler import DefaultBatchSampler
from transformers import PrinterCallback, TrainerCallback

from job.errors import Interrupted, RunStateError
from job.log import Progress, get_logger
from job.storage import Store, download_dir, upload_dir

CHECKPOINTS = "checkpoints"


COMPLETE = "COMPLETE"


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (all CUDA devices) from one seed."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def batch_sampler_for(group_by_length: bool) -> Any:
    """Batches of rows of similar length (`train.group_by_length`), and for the ranking losses without a text
    repeated in a batch (a repeat would be an in-batch "negative" that is the positive itself).
    A partial of a module-level function: the trainer pickles its arguments into checkpoints."""
    return functools.partial(_batch_sampler, group_by_length=group_by_length)


def _batch_sampler(dataset: Any, group_by_length: bool, **kwargs: Any) -> Any:
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    if "anchor" in dataset.column_names:
        ranking = LengthGroupedNoDuplicatesBatchSampler if group_by_length else NoDuplicatesBatchSampler
        return ranking(dataset, **kwargs)
    return (LengthGroupedBatchSampler if group_by_length else DefaultBatchSampler)(dataset, **kwargs)


WINDOW_BATCHES = 50
SWAP_SEARCH_STEPS = 20_000  # bound the tail repair of LengthGroupedNoDuplicatesBatchSampler (_Swaps)
SWAP_BRANCHES = 16
RESAMPLE_PASSES = 5


def length_grouped_order(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[int]:
    """Row indices shuffled, then sorted by length inside windows of WINDOW_BATCHES batches: cut into batches
    in this order, each batch is nearly uniform in length while the windows keep the epoch random."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * WINDOW_BATCHES
    return [
        i
        for start in range(0, len(order), window)
        for i in sorted(order[start : start + window], key=lengths.__getitem__)
    ]


def batches_in_epoch(rows: int, batch_size: int, drop_last: bool) -> int:
    """What both length-grouped samplers promise len() to be, as PyTorch's BatchSampler does."""
    full, rest = divmod(rows, batch_size)
    return full if drop_last or not rest else full + 1


def full_batches_shuffled_then_partial(
    batches: list[list[int]], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Full batches in random order, partial ones last (largest first), as PyTorch's samplers give them:
    under DDP, accelerate deals batches to the processes in rounds and skips a round whose last batch
    is short, so a partial batch in the middle of the epoch would cost an optimizer step."""
    full = [b for b in batches if len(b) == batch_size]
    rng.shuffle(full)
    return full + sorted((b for b in batches if len(b) < batch_size), key=len, reverse=True)


class _LengthGroupedSampler(DefaultBatchSampler):
    """What both length-grouped samplers share: sentence-transformers' batch sampler arguments, each row's
    length in characters (`_measure` reads the rows), and len() as PyTorch's BatchSampler counts it."""

    lengths: list[int]

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: Any = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        self._measure(dataset, valid_label_columns or [])

    def _measure(self, dataset: Any, label_columns: list[str]) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        return batches_in_epoch(len(self.lengths), self.batch_size, self.drop_last)


class LengthGroupedBatchSampler(_LengthGroupedSampler):
    """Batches of pairs of similar length, in a seeded random order.

    Each side of a pair is padded to the longest text in its batch, so random batches of
    ticket texts (a title alone next to a 4,000-character stack trace) waste most of the
    compute on padding. The rows in `length_grouped_order` are batched and the batches shuffled
    again. Deterministic for (seed, epoch), so a resumed run skips exactly the batches it had
    already trained on.
    """

    def _measure(self, dataset: Any, label_columns: list[str]) -> None:
        pairs = zip(dataset["sentence1"], dataset["sentence2"], strict=True)
        self.lengths = [len(a) + len(b) for a, b in pairs]

    def __iter__(self) -> Any:
        rng = random.Random(self.seed + self.epoch)
        order = length_grouped_order(self.lengths, self.batch_size, rng)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        yield from full_batches_shuffled_then_partial(batches, self.batch_size, rng)


class LengthGroupedNoDuplicatesBatchSampler(_LengthGroupedSampler):
    """Ranking-loss batches of rows of similar length with no text twice in a batch.

    sentence-transformers' NoDuplicatesBatchSampler packs rows in random order; at 256 tokens a
    title-only row then pads to a stack trace's length. Here the rows go in `length_grouped_order`
    and are packed greedily: a row sharing a text with the batch waits, first in line, for the next
    one, so batches stay nearly uniform in length. The batches are shuffled; deterministic for (seed,
    epoch).

    `len()` is the number of batches the rows fill, as in sentence-transformers, and exactly that many
    are yielded, full ones first: the scheduler, the multi-dataset sampler and, under DDP, the split
    between processes all rely on it. Short batches the greedy pass leaves are filled by swaps
    (`_Swaps`); when rows share texts too often for that, fresh passes top the epoch up with full
    batches that repeat some rows (`_resampled`, as sentence-transformers does).
    """

    def _measure(self, dataset: Any, label_columns: list[str]) -> None:
        skip = {"dataset_name", *label_columns}
        rows = list(zip(*(dataset[c] for c in dataset.column_names if c not in skip), strict=True))
        self.texts = [frozenset(row) for row in rows]
        self.lengths = [sum(len(text) for text in row) for row in rows]

    def __iter__(self) -> Any:
        rng = random.Random(self.seed + self.epoch)
        batches = self._packed(length_grouped_order(self.lengths, self.batch_size, rng))
        full = [b for b in batches if len(b) == self.batch_size]
        short = sorted((b for b in batches if len(b) < self.batch_size), key=len, reverse=True)
        wanted = len(self.lengths) // self.batch_size
        if len(full) < wanted:
            full += self._resampled(wanted - len(full), rng)
        partial = [] if self.drop_last else short[: max(0, len(self) - len(full))]
        yield from full_batches_shuffled_then_partial(full[:wanted] + partial, self.batch_size, rng)

    def _resampled(self, missing: int, rng: random.Random) -> list[list[int]]:
        """Full batches from fresh passes over all rows, as sentence-transformers' NoDuplicatesBatchSampler
        tops up a pass that packs fewer batches than len(): a few rows repeat in this epoch instead of
        a DDP round or a scheduled step being lost."""
        extra: list[list[int]] = []
        for _ in range(RESAMPLE_PASSES):
            order = length_grouped_order(self.lengths, self.batch_size, rng)
            extra += [b for b in self._packed(order) if len(b) == self.batch_size][: missing - len(extra)]
            if len(extra) == missing:
                break
        get_logger().warning(
            "ranking batches topped up with repeated rows: rows share texts too often for this batch size",
            missing=missing,
            topped_up=len(extra),
            batches=len(self),
        )
        return extra

    def _packed(self, order: list[int]) -> list[list[int]]:
        batches = []
        waiting = deque(order)
        while waiting:
            batch: list[int] = []
            seen: set[str] = set()
            deferred: list[int] = []
            # A text in more rows than there are batches defers those rows to the end: bound the look-ahead
            # to one window, so such a tail costs linear time (its rows end in short batches).
            look_ahead = self.batch_size * WINDOW_BATCHES
            while waiting and len(batch) < self.batch_size and len(deferred) < look_ahead:
                row = waiting.popleft()
                if self.texts[row] & seen:
                    deferred.append(row)
                    continue
                batch.append(row)
                seen |= self.texts[row]
            waiting.extendleft(reversed(deferred))
            batches.append(batch)
        return self._tail_filled(batches)

    def _tail_filled(self, batches: list[list[int]]) -> list[list[int]]:
        """Greedy packing leaves rows that share a text with every row near them for last, a short batch
        each. Fill the short batches from one another, moving each row in directly or by a chain of swaps
        through the full batches (`_Swaps`)."""
        full = [b for b in batches if len(b) == self.batch_size]
        swaps = _Swaps(self.texts, full, random.Random(len(batches)))
        short = sorted((b for b in batches if len(b) < self.batch_size), key=len, reverse=True)
        filled = []
        while short and swaps.steps_left > 0:
            target = short.pop(0)
            for donor in short:
                for row in list(donor):
                    if len(target) < self.batch_size and swaps.placed(row, target):
                        donor.remove(row)
            short = [b for b in short if b]
            filled.append(target)
        return full + filled + short


class _Swaps:
    """Moves a row into a short batch through the full batches without a text twice in any batch: `row`
    takes the place of the one row of a full batch it clashes with, that row takes a place in another
    full batch, and so on until a displaced row fits the short batch. A breadth-first search over
    displaced rows, each batch used once per chain; each step looks at a bounded number of batches and
    the whole repair at SWAP_SEARCH_STEPS steps, so texts shared by more rows than there are batches
    (which no packing can place) cost a bounded time, and those rows stay in short batches."""

    def __init__(self, texts: list[frozenset[str]], full: list[list[int]], rng: random.Random) -> None:
        self.texts, self.full, self.rng = texts, full, rng
        self.holder: dict[str, dict[int, int]] = {}  # text -> {full batch: position of the row holding it}
        for b, batch in enumerate(full):
            for i, row in enumerate(batch):
                for text in texts[row]:
                    self.holder.setdefault(text, {})[b] = i
        self.steps_left = SWAP_SEARCH_STEPS

    def placed(self, row: int, target: list[int]) -> bool:
        """True once `row` (or the end of its chain) is in `target`; False leaves every batch as it was."""
        taken = set().union(*(self.texts[r] for r in target))
        queue: deque[tuple[int, list[tuple[int, int]]]] = deque([(row, [])])
        visited = {row}
        while queue and self.steps_left > 0:
            self.steps_left -= 1
            moving, chain = queue.popleft()
            if not self.texts[moving] & taken:
                self._swap_along(row, chain, target)
                return True
            used = {b for b, _ in chain}
            clashes: dict[int, set[int]] = {}
            for text in self.texts[moving]:
                for b, i in self.holder.get(text, {}).items():
                    clashes.setdefault(b, set()).add(i)
            # A batch it does not clash with: it takes the place of a row that fits target.
            for b in self._probes(len(self.full)):
                if b not in used and b not in clashes:
                    fits = next((i for i, o in enumerate(self.full[b]) if not self.texts[o] & taken), None)
                    if fits is not None:
                        self._swap_along(row, [*chain, (b, fits)], target)
                        return True
            singles = [b for b, at in clashes.items() if len(at) == 1 and b not in used]
            for b in self.rng.sample(singles, min(len(singles), SWAP_BRANCHES)):
                (i,) = clashes[b]
                if self.full[b][i] not in visited:
                    visited.add(self.full[b][i])
                    queue.append((self.full[b][i], [*chain, (b, i)]))
        return False

    def _probes(self, n: int) -> list[int]:
        return list(range(n)) if n <= SWAP_BRANCHES else [self.rng.randrange(n) for _ in range(SWAP_BRANCHES)]

    def _swap_along(self, row: int, chain: list[tuple[int, int]], target: list[int]) -> None:
        moving = row
        for b, i in chain:
            out = self.full[b][i]
            for text in self.texts[out]:
                del self.holder[text][b]
            for text in self.texts[moving]:
                self.holder.setdefault(text, {})[b] = i
            self.full[b][i], moving = moving, out
        target.append(moving)


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

    def __init__(
        self,
        store: Store,
        log: Any,
        stop: threading.Event,
        prefix: str = CHECKPOINTS,
        what: str = "train",
        stamp: str = "",
    ) -> None:
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
            self.log.warning(
                "stop requested: saving a checkpoint and stopping", global_step=state.global_step
            )
            control.should_save = True
            control.should_training_stop = True

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stop.is_set():
            # Stopping mid-epoch ends the epoch loop, and the trainer would then run the epoch's val
            # evaluation (minutes on a CPU, past the pod's grace period) and save a second time.
            # The checkpoint was already saved at the step where the stop came.
            control.should_evaluate = False
            control.should_save = False

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if logs and "loss" in logs:
            self.log.info(
                "train loss",
                global_step=state.global_step,
                epoch=round(state.epoch or 0, 3),
                loss=round(float(logs["loss"]), 5),
                learning_rate=logs.get("learning_rate"),
            )

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if metrics:
            self.log.info(
                "val metrics",
                global_step=state.global_step,
                **{k: round(float(v), 5) for k, v in metrics.items() if isinstance(v, int | float)},
            )

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


def train_resumably(
    trainer: Any,
    store: Store,
    output_dir: Path,
    log: Any,
    stop: threading.Event,
    *,
    required: bool,
    prefix: str,
    what: str,
) -> tuple[Path | None, float]:
    """Run a (SentenceTransformer or CrossEncoder) trainer from the newest checkpoint under `prefix`.

    Returns the checkpoint it resumed from and the seconds trained; raises Interrupted when `stop` was set
    (the callback has saved a checkpoint by then)."""
    trainer.remove_callback(PrinterCallback)  # it prints dicts to stdout, breaking the JSON log stream
    checkpoint = fetch_checkpoint(store, output_dir, log, required=required, prefix=prefix)
    t0 = time.monotonic()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.monotonic() - t0
    if stop.is_set():
        raise Interrupted(
            f"{what} stopped at step {trainer.state.global_step} on request; "
            "the checkpoint is saved and a rerun with the same run id resumes from it"
        )
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


def fetch_checkpoint(
    store: Store, output_dir: Path, log: Any, required: bool, prefix: str = CHECKPOINTS
) -> Path | None:
    """The newest complete checkpoint under `prefix`, downloaded into `output_dir` (None when none is)."""
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


def shared_arguments(
    output_dir: Path,
    *,
    epochs: int,
    batch_size: int,
    eval_batch_size: int,
    learning_rate: float,
    warmup_ratio: float,
    seed: int,
    precision: str,
    select_best: bool,
    best_metric: str,
    logging_steps: int,
    group_by_length: bool,
) -> dict[str, Any]:
    """The training arguments both trainers set alike; each adds its own (eval and save cadence, DDP)."""
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": epochs,
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": eval_batch_size,
        "learning_rate": learning_rate,
        "warmup_steps": warmup_ratio,  # a float below 1 is a ratio of the total steps
        "seed": seed,
        "data_seed": seed,
        "fp16": precision == "fp16",
        "bf16": precision == "bf16",
        "save_total_limit": 2,
        "load_best_model_at_end": select_best,
        "metric_for_best_model": best_metric if select_best else None,
        "greater_is_better": True,
        "logging_steps": logging_steps,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": precision != "fp32",
        "batch_sampler": batch_sampler_for(group_by_length),
    }
