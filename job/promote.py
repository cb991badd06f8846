"""Promotion gate: move `<output.uri>/promoted.json` to a run only if it is not worse.

The pointer names the promoted run, the metric it was judged on, that metric's value and when
it was promoted. `promote` reads the candidate run's `metrics.json` (the run must be finished),
compares `finetuned.<promote.metric>` with the pointer's value, and replaces the pointer only if
the candidate is at most `promote.margin` worse; otherwise it raises `PromotionRefused` (exit 3)
and the pointer stays where it was.

Replacing the pointer is a compare-and-swap, so two promotions that race (two retraining runs
finishing together, or a retried pod) never lose an update: on S3 a conditional write
(`If-None-Match: *` to create, `If-Match: <etag>` to replace); in a local directory an exclusive
lock file (O_EXCL) around "check the version, then write". The loser of a race re-reads the
pointer and decides again against the winner.

Example:
    >>> promote(load_config("config.yaml"), "20260101T030000Z-a1b2c3")  # doctest: +SKIP
    {'run_id': '20260101T030000Z-a1b2c3', 'metric': 'average_precision', 'value': 0.91, ...}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from job.artifacts import MANIFEST, METRICS, RunDir, check_run_id, to_json
from job.config import LoadedConfig
from job.errors import ConfigError, PromotionRefused, RunStateError, StorageError
from job.log import get_logger
from job.storage import LocalStore, S3Store, Store, _s3_error, check_key, open_store

MAX_ATTEMPTS = 10  # compare-and-swap rounds before giving up (exit 75: the orchestrator retries)
LOCK_WAIT_S = 10.0  # how long a local promotion waits for another one to release the lock
STALE_LOCK_S = 60.0  # a local lock older than this was left by a killed process (a swap takes milliseconds)
TOLERANCE = 1e-12  # float rounding must not turn "exactly at the margin" into a refusal


# ---------------------------------------------------------------- the decision (pure)


@dataclass(frozen=True)
class Decision:
    """A candidate run against the promoted one on one metric (higher is better): no promoted
    run, or a candidate at most `margin` worse, means promote."""

    metric: str
    candidate_run: str
    candidate: float
    promoted_run: str | None
    promoted: float | None
    margin: float

    @property
    def delta(self) -> float | None:
        return None if self.promoted is None else self.candidate - self.promoted

    @property
    def accepted(self) -> bool:
        return self.delta is None or self.delta >= -self.margin - TOLERANCE

    def as_log(self) -> dict[str, Any]:
        return {"metric": self.metric, "candidate_run": self.candidate_run, "candidate_value": self.candidate,
                "promoted_run": self.promoted_run, "promoted_value": self.promoted, "margin": self.margin,
                "delta": None if self.delta is None else round(self.delta, 6),
                "decision": "promote" if self.accepted else "refuse"}

    def explain(self) -> str:
        if self.promoted is None:
            return f"run {self.candidate_run} {self.metric}={self.candidate:.4f}; no promoted run yet"
        return (f"run {self.candidate_run} {self.metric}={self.candidate:.4f} vs promoted run {self.promoted_run} "
                f"{self.metric}={self.promoted:.4f} (delta {self.delta:+.4f}, margin {self.margin:g})")


# ---------------------------------------------------------------- the pointer slot (compare-and-swap)


@dataclass(frozen=True)
class Versioned:
    """The pointer's bytes and the version they were read at (S3 ETag, or sha256 locally)."""

    data: bytes
    version: str


class PointerSlot(Protocol):
    """One object that is only ever replaced if nobody replaced it since it was read."""

    where: str

    def read(self) -> Versioned | None: ...

    def replace(self, data: bytes, expected: Versioned | None) -> bool:
        """Write `data` if the slot still holds `expected` (None: still absent); False if it moved."""
        ...


class S3PointerSlot:
    """Conditional writes: If-None-Match: * creates only if absent, If-Match: <etag> replaces only if unchanged.

    Uses the store's client directly because the Store interface has no versioned read or
    conditional replace yet; failures are classified (exit 75 or 2) by storage's `_s3_error`.
    """

    _CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
    _MISSING = {"NoSuchKey", "404", "NotFound"}

    def __init__(self, store: S3Store, key: str) -> None:
        self.store = store
        self.key = f"{store.prefix}/{check_key(key)}" if store.prefix else check_key(key)
        self.where = f"s3://{store.bucket}/{self.key}"

    def read(self) -> Versioned | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.store.client.get_object(Bucket=self.store.bucket, Key=self.key)
            data = response["Body"].read()
        except ClientError as exc:
            if _code(exc) in self._MISSING:
                return None
            raise _s3_error(exc, "read", self.where) from None
        except (BotoCoreError, OSError) as exc:
            raise _s3_error(exc, "read", self.where) from None
        expected = response.get("Metadata", {}).get("sha256")
        if expected and expected != hashlib.sha256(data).hexdigest():  # a cut or corrupted transfer, not a bad pointer
            raise StorageError(f"read {self.where}: sha256 mismatch", transient=True)
        return Versioned(bytes(data), str(response["ETag"]))

    def replace(self, data: bytes, expected: Versioned | None) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {"IfMatch": expected.version} if expected else {"IfNoneMatch": "*"}
        try:
            self.store.client.put_object(Bucket=self.store.bucket, Key=self.key, Body=data,
                                         Metadata={"sha256": hashlib.sha256(data).hexdigest()},
                                         ContentType="application/json", **condition)
        except ClientError as exc:
            if _code(exc) in self._CONFLICT:
                return False
            raise _s3_error(exc, "write", self.where) from None
        except (BotoCoreError, OSError) as exc:
            raise _s3_error(exc, "write", self.where) from None
        return True


class LocalPointerSlot:
    """A lock file created with O_EXCL around "check the version, then write" (the write itself is an atomic rename)."""

    def __init__(self, store: LocalStore, key: str) -> None:
        self.store, self.key, self.lock_key = store, check_key(key), f"{check_key(key)}.lock"
        self.where = str(store.root / self.key)

    def read(self) -> Versioned | None:
        if not self.store.exists(self.key):
            return None
        try:
            data = self.store.read_bytes(self.key)
        except StorageError:
            if not self.store.exists(self.key):  # removed between the two calls
                return None
            raise
        return Versioned(data, hashlib.sha256(data).hexdigest())

    def replace(self, data: bytes, expected: Versioned | None) -> bool:
        with self._locked():
            current = self.read()
            if (current.version if current else None) != (expected.version if expected else None):
                return False
            self.store.write_bytes(self.key, data)
            return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        token = to_json({"host": socket.gethostname(), "pid": os.getpid(), "nonce": random.getrandbits(64)})
        deadline = time.monotonic() + LOCK_WAIT_S
        while not self._create_lock(token):
            self._break_if_stale()
            if time.monotonic() > deadline:
                raise StorageError(f"{self.where}.lock: another promotion held the lock for over {LOCK_WAIT_S:g}s",
                                   transient=True)
            time.sleep(random.uniform(0.005, 0.05))
        try:
            yield
        finally:
            self.store.delete_prefix(self.lock_key)

    def _create_lock(self, token: bytes) -> bool:
        try:
            return self.store.create_exclusive(self.lock_key, token)
        except OSError as exc:
            raise StorageError(f"cannot create {self.where}.lock: {exc.strerror or exc}", transient=False) from exc

    def _break_if_stale(self) -> None:
        """Remove a lock left by a killed promotion; a live one holds it for milliseconds."""
        path = self.store.root / self.lock_key
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return
        if age > STALE_LOCK_S:
            get_logger(step="promote").warning("removing a stale pointer lock", lock=str(path), age_s=round(age))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def pointer_slot(store: Store, key: str) -> PointerSlot:
    """The compare-and-swap slot for `key` in `store` (S3 or a local directory)."""
    if isinstance(store, S3Store):
        return S3PointerSlot(store, key)
    if isinstance(store, LocalStore):
        return LocalPointerSlot(store, key)
    raise ConfigError(f"promotion needs an S3 or local output.uri, got {store.uri}")


def _code(exc: Any) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


# ---------------------------------------------------------------- the gate


@dataclass(frozen=True)
class Candidate:
    run_id: str
    uri: str
    value: float


def promote(loaded: LoadedConfig, run_id: str) -> dict[str, Any]:
    """Compare the run's metrics with the promoted run's; move the pointer or raise PromotionRefused.

    Returns the pointer as written (or as found, when `run_id` is already the promoted run).
    Raises RunStateError when the run is not finished, ConfigError when the metric does not exist.
    """
    cfg = loaded.config
    metric, margin = cfg.promote.metric, cfg.promote.margin
    log = get_logger(step="promote", run_id=run_id)
    root = open_store(cfg.output.uri.rstrip("/"), cfg.storage)
    candidate = read_candidate(root, check_run_id(run_id), metric)
    slot = pointer_slot(root, cfg.promote.pointer)
    jitter = random.Random()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        current = slot.read()
        pointer = parse_pointer(current, slot.where)
        if pointer is not None and pointer["run_id"] == run_id:
            log.info("already promoted", pointer=slot.where, value=pointer.get("value"))
            return pointer
        decision = Decision(metric, run_id, candidate.value, pointer["run_id"] if pointer else None,
                            promoted_value(root, pointer, metric), margin)
        log.info("comparison", attempt=attempt, **decision.as_log())
        if not decision.accepted:
            raise PromotionRefused(f"not promoted: {decision.explain()}; {slot.where} still names "
                                   f"{decision.promoted_run}")
        new = new_pointer(candidate, metric, margin, pointer)
        if slot.replace(to_json(new), expected=current):
            log.info("promoted", pointer=slot.where, previous_run=decision.promoted_run, **{metric: candidate.value})
            return new
        log.info("pointer moved while deciding; comparing again", pointer=slot.where, attempt=attempt)
        time.sleep(jitter.uniform(0, 0.05 * attempt))
    raise StorageError(f"{slot.where} kept changing during {MAX_ATTEMPTS} attempts; try again", transient=True)


def read_candidate(root: Store, run_id: str, metric: str) -> Candidate:
    """The finished run's value of `finetuned.<metric>`."""
    run = RunDir(root.child(run_id), run_id)
    if not run.is_finished():
        raise RunStateError(f"run {run_id} is not finished ({run.uri}/{MANIFEST} is missing); "
                            "only a finished run can be promoted")
    value = metric_value(run.read_json(METRICS), metric, f"{run.uri}/{METRICS}")
    if value is None:
        raise PromotionRefused(f"not promoted: run {run_id} has no value for {metric} (the test split could not "
                               f"score it); see {run.uri}/{METRICS}")
    return Candidate(run_id, run.uri, value)


def metric_value(metrics: dict[str, Any], metric: str, where: str) -> float | None:
    """`metrics['finetuned'][metric]` as a finite float, None when the run could not compute it."""
    finetuned = metrics.get("finetuned")
    if not isinstance(finetuned, dict):
        raise RunStateError(f"{where} has no 'finetuned' section")
    if metric not in finetuned:
        known = sorted(k for k, v in finetuned.items() if isinstance(v, int | float) and not isinstance(v, bool))
        raise ConfigError(f"promote.metric '{metric}' is not in {where}; expected one of: {', '.join(known)}")
    value = finetuned[metric]
    if value is None or isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def parse_pointer(current: Versioned | None, where: str) -> dict[str, Any] | None:
    if current is None:
        return None
    try:
        pointer = json.loads(current.data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunStateError(f"{where} is not valid JSON ({exc}); fix or delete it to promote again") from None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("run_id"), str):
        raise RunStateError(f"{where} does not name a run (no 'run_id'); fix or delete it to promote again")
    return pointer


def promoted_value(root: Store, pointer: dict[str, Any] | None, metric: str) -> float | None:
    """The promoted run's value of `metric`: from the pointer, or its metrics.json if it was judged on another metric."""
    if pointer is None:
        return None
    if pointer.get("metric") == metric and isinstance(pointer.get("value"), int | float):
        return float(pointer["value"])
    run_id = check_run_id(pointer["run_id"])
    run = RunDir(root.child(run_id), run_id)
    if not run.store.exists(METRICS):
        raise RunStateError(f"cannot compare on {metric}: the promoted run {run_id} was judged on "
                            f"{pointer.get('metric')} and {run.uri}/{METRICS} is gone")
    value = metric_value(run.read_json(METRICS), metric, f"{run.uri}/{METRICS}")
    if value is None:
        raise RunStateError(f"cannot compare on {metric}: the promoted run {run_id} has no value for it")
    return value


def new_pointer(candidate: Candidate, metric: str, margin: float, previous: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "run_id": candidate.run_id,
        "uri": candidate.uri,
        "metric": metric,
        "value": candidate.value,
        "margin": margin,
        "promoted_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "previous": None if previous is None else {k: previous.get(k) for k in ("run_id", "metric", "value", "promoted_at")},
    }
