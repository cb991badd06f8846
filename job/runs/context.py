"""One run's state in a process (RunContext): its storage, scratch directory, lock, base model, the
fingerprint each step is made from; opening a run, deciding which steps a rerun takes over, and finishing
it (card, metadata, manifest last). The step bodies are job/pipeline.py's; nothing here imports it."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job import profile
from job.config import JobConfig, LoadedConfig
from job.data.pairs import Pair
from job.embedding.model import (
    distributed_rank,
    load_model,
    resolve_model_path,
)
from job.environment import use_cache_dir
from job.errors import Interrupted, RunStateError
from job.jsonio import from_jsonl
from job.log import get_logger
from job.runs.artifacts import RunDir, StepTimer, check_run_id, new_run_id
from job.runs.card import CARD_SAMPLES, MODEL_CARD, CardSample, model_card
from job.runs.fingerprint import Fingerprint, config_checksum, input_checksums
from job.runs.locks import refuse_if_locked, run_lock
from job.runs.records import RunResults
from job.runs.step_metrics import step_numbers, write_step_metrics
from job.runs.steps import (
    PREPARE,
    SHARED_STEPS,
    STEPS,
    Step,
    required_steps,
)
from job.storage import is_remote, local_path, open_store


@dataclass
class RunContext:
    """Everything a step needs about the run it belongs to; created once per process."""

    loaded: LoadedConfig
    run: RunDir
    work_dir: Path
    force: bool = False
    rank: int = 0  # torchrun rank; only rank 0 writes to the run directory
    stop: threading.Event = field(default_factory=threading.Event)  # SIGTERM: checkpoint and stop
    checkpointing: threading.Event = field(default_factory=threading.Event)  # set while a stop can checkpoint
    _input_checksums: dict[str, str] | None = None
    _base_model: Any = None  # loaded once per process: prepare's mining hands it to train

    def base_model(self) -> Any:
        """The untouched base model, loaded on first use."""
        if self._base_model is None:
            self._base_model = _load_base(self)
        return self._base_model

    def take_base_model(self) -> Any:
        """The base model for a step that changes it (train) or is its last user (evaluate): this process
        holds it no longer, so it is freed when that step ends and a later user loads its own."""
        model, self._base_model = self.base_model(), None
        return model

    @property
    def cfg(self) -> JobConfig:
        return self.loaded.config

    def log(self, step: str) -> Any:
        return get_logger(run_id=self.run.run_id, step=step)

    def fingerprint(self, step: Step) -> Fingerprint:
        """What `step` is made from in this process. A step with no needs reads the inputs (hashed
        once per process); the others are made from what prepare recorded, so they carry its inputs."""
        if not step.needs:
            if self._input_checksums is None:
                self._input_checksums = input_checksums(self.cfg)
            inputs = self._input_checksums
        else:
            made_from = self.run.step_record(step.needs[0].name)
            inputs = made_from.fingerprint.inputs_sha256 if made_from and made_from.fingerprint else {}
        return Fingerprint(config_checksum(self.cfg), inputs)


def open_run(loaded: LoadedConfig, run_id: str | None = None, force: bool = False) -> RunContext:
    """The run's storage and where its scratch directory goes; a new run id when none is given.

    Nothing is created here: `exclusive` makes the scratch directory once the run's lock is held."""
    cfg = loaded.config
    use_cache_dir(cfg.runtime)
    run_id = check_run_id(run_id or new_run_id())  # before any path or store is made from it
    run_uri = cfg.output.uri.rstrip("/") + "/" + run_id
    _refuse_odd_local_run_dir(run_uri, run_id)
    store = open_store(run_uri, cfg.storage)
    rank = distributed_rank()
    name = f"finetune-{run_id}" + (f"-rank{rank}" if rank else "")
    # Without runtime.work_dir the scratch is this process's own (removed when it ends): evaluate and classify
    # of one run, or two runs of one id under other output folders, may run on one host at once.
    work_dir = (
        Path(cfg.runtime.work_dir) / name
        if cfg.runtime.work_dir
        else Path(tempfile.gettempdir()) / f"{name}-{secrets.token_hex(4)}"
    )
    return RunContext(loaded=loaded, run=RunDir(store, run_id), work_dir=work_dir, force=force, rank=rank)


def _refuse_odd_local_run_dir(run_uri: str, run_id: str) -> None:
    """A local run directory must be a real directory (or not exist yet): writes must not follow a
    symlink out of the output folder, and a file of that name (promoted.json) is not a run."""
    if is_remote(run_uri):
        return
    path = local_path(run_uri)
    if path.is_symlink():
        raise RunStateError(
            f"run {run_id}: the run directory in the output folder is a symbolic link; "
            "refusing to write through it (use a new run id)"
        )
    if path.exists() and not path.is_dir():
        raise RunStateError(
            f"run {run_id}: the output folder holds a file of that name, not a run directory "
            "(use another run id)"
        )


@contextlib.contextmanager
def exclusive(ctx: RunContext, command: str) -> Iterator[None]:
    """Hold the run's lock for `command`, and its scratch directory while the lock is held.

    A second process with the same run id stops at once, before it creates or deletes anything
    (the scratch directory is named after the run id, so it would be the holder's). Steps that
    share the run (evaluate, classify) each take their own lock; `run` and the others own it."""
    with _run_lock_for(ctx, command):
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            yield
        finally:  # still holding the lock: the next holder's fresh scratch is never removed
            if not ctx.cfg.runtime.work_dir:
                shutil.rmtree(ctx.work_dir, ignore_errors=True)


@contextlib.contextmanager
def _run_lock_for(ctx: RunContext, command: str) -> Iterator[None]:
    if ctx.rank != 0:  # torchrun workers follow rank 0, which holds the lock
        yield
        return
    log, ttl, store = ctx.log(command), ctx.cfg.runtime.lock_ttl_s, ctx.run.store
    shared = [step.name for step in SHARED_STEPS]
    if command in shared:
        refuse_if_locked(store, "run", ttl)  # prepare/train/run active: the inputs may still change
        with run_lock(store, command, log, ttl):
            yield
        return
    for other in shared:
        refuse_if_locked(store, other, ttl)
    with run_lock(store, "run", log, ttl):
        yield


def begin_step(ctx: RunContext, step: Step) -> StepTimer:
    """Check the run can take `step` now (see RunDir.begin_step); the timer stamps its record."""
    fingerprint = ctx.fingerprint(step)
    ctx.run.begin_step(step, ctx.force, fingerprint.config_sha256)
    return StepTimer(step.name, fingerprint)


def reuse_or_refuse(ctx: RunContext, step: Step) -> bool:
    """True when `step` recorded itself with what it would be made from now, so a rerun reuses it.

    A record made from another config or other inputs stops the run (exit 2) unless --force,
    which redoes the step: never mix results of two configs in one run without being told to.
    """
    record = ctx.run.step_record(step.name)
    if record is None:
        return False
    changes = ctx.fingerprint(step).changes_since(record.fingerprint)
    if changes and not ctx.force:
        raise RunStateError(
            f"step '{step.name}' of run {ctx.run.run_id} cannot be reused: "
            f"{'; '.join(changes)}. "
            "Pass --force to redo it and the steps after it, or use a new run id"
        )
    return not changes


def reusable_steps(ctx: RunContext) -> set[Step]:
    """The steps `run` can take over from an earlier attempt: done (reuse_or_refuse), and built only on
    steps it takes over too. A finished run is refused without --force, and redone with it."""
    if ctx.run.is_finished():
        ctx.run.refuse_or_reopen_finished(ctx.force)
        return set()
    done: set[Step] = set()
    for step in STEPS:
        if all(need in done for need in step.needs) and reuse_or_refuse(ctx, step):
            done.add(step)
    return done


def _load_base(ctx: RunContext) -> Any:
    model = ctx.cfg.model
    return load_model(base_model_path(ctx), model.max_seq_length, text_prefix=model.text_prefix)


def base_model_path(ctx: RunContext) -> str:
    cache = Path(ctx.cfg.runtime.cache_dir) if ctx.cfg.runtime.cache_dir else ctx.work_dir / "cache"
    return resolve_model_path(ctx.cfg.model.base, ctx.cfg.storage, cache)


def finish_if_complete(ctx: RunContext) -> bool:
    """Once every required step has recorded itself: the model card into model/, then the metadata
    and, last, the manifest. Evaluate and classify may finish in parallel pods; each calls this
    after recording itself, so one of them sees both records."""
    required = required_steps(ctx.cfg.classify.enabled)
    records = ctx.run.complete_records(required)
    if records is None:
        return False
    samples = card_samples(ctx)
    card_text = model_card(ctx.run.run_id, ctx.cfg, RunResults.of(records), samples)
    card = ctx.run.store.write_bytes(MODEL_CARD, card_text.encode())
    return ctx.run.finish_if_complete(required, ctx.cfg.redacted(), extra_files=(card,))


def card_samples(ctx: RunContext) -> list[CardSample] | None:
    """A few test pairs with their ticket text for the card, only when model.card_samples asks for them: the
    card travels to registries and other teams, so by default no ticket text is even read for it."""
    if not ctx.cfg.model.card_samples:
        return None
    texts = {r["id"]: r["text"] for r in from_jsonl(ctx.run.taken_over(PREPARE, "prepared/tickets.jsonl"))}
    pairs = [Pair(**r) for r in from_jsonl(ctx.run.taken_over(PREPARE, "prepared/pairs_test.jsonl"))]
    return [
        CardSample(
            texts[p.a], p.text_b if p.text_b is not None else texts[p.b], p.score, p.relation or p.kind
        )
        for p in pairs[:CARD_SAMPLES]
    ]


def stop_if_asked(ctx: RunContext, step: Step) -> None:
    """Stop before `step` when a SIGTERM came: its handler raises at once, but Python drops an exception
    raised inside a garbage collector's callback (the signal may land there), and the flag it set stays."""
    if ctx.stop.is_set():
        raise Interrupted(
            f"stopped by SIGTERM before step '{step.name}'; rerun with the same run id to finish"
        )


def publish_step_metrics(ctx: RunContext, steps: tuple[Step, ...]) -> None:
    """Write the key numbers of `steps` under runtime.metrics_dir (job/runs/step_metrics.py), from the
    records, so a retried pod whose step was already done publishes them too."""
    folder = ctx.cfg.runtime.metrics_dir
    if not folder or ctx.rank != 0:
        return
    for step in steps:
        record = ctx.run.step_record(step.name)
        numbers = step_numbers(step.name, RunResults.of({step.name: record}), ctx.cfg.promote.metric)
        if record is not None and numbers:
            write_step_metrics(Path(folder), numbers)
            ctx.log(step.name).info("step metrics written", folder=folder, **numbers)


def profile_table(ctx: RunContext, command: str) -> str:
    """Seconds per phase of each step `command` ran or took over (job/runs/profile.py), from their records."""
    steps = STEPS if command == "run" else tuple(s for s in STEPS if s.name == command)
    records = {step.name: record for step in steps if (record := ctx.run.step_record(step.name)) is not None}
    return f"where the time went (seconds; {ctx.run.run_id}):\n" + profile.table(records)
