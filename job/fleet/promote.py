"""Promotion gate: move `<output.uri>/promoted.json` to a run only if it is not worse.

The pointer names the promoted run, the metric it was judged on, that metric's value and when
it was promoted. `promote` first verifies the candidate against its manifest (the run id, and
every file listed, `metrics.json` and the whole `model/` among them, by size and sha256) and
that its metric is a number in range; a candidate that fails is refused with exit 2 saying what
failed. Then it compares `finetuned.<promote.metric>` with the pointer's value and replaces the
pointer only if the candidate is at most `promote.margin` worse; otherwise it raises
`PromotionRefused` (exit 3) and the pointer stays where it was.

Replacing the pointer is a compare-and-swap on the Store (create-if-absent, then
replace-if-unchanged on the version read), so two promotions that race (two retraining runs
finishing together, or a retried pod) never lose an update. The loser of a race re-reads the
pointer and decides again against the winner.

Example:
    >>> promote(load_config("config.yaml"), "20260101T030000Z-a1b2c3")  # doctest: +SKIP
    {'run_id': '20260101T030000Z-a1b2c3', 'metric': 'average_precision', 'value': 0.91, ...}
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from job.config import LoadedConfig
from job.errors import ConfigError, PromotionRefused, RunStateError, StorageError
from job.fleet.history import METRIC_RANGE, parse_pointer, refresh_history
from job.jsonio import to_json
from job.log import get_logger
from job.retrieval.index import INDEX_JSON
from job.runs.artifacts import MANIFEST, METRICS, RunDir, check_run_id
from job.storage import FileRecord, Store, Versioned, open_store, sha256_file

MAX_ATTEMPTS = 10  # compare-and-swap rounds before giving up (exit 75: the orchestrator retries)
TOLERANCE = 1e-12  # float rounding must not turn "exactly at the margin" into a refusal
MODEL = "model/"


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
        return {
            "metric": self.metric,
            "candidate_run": self.candidate_run,
            "candidate_value": self.candidate,
            "promoted_run": self.promoted_run,
            "promoted_value": self.promoted,
            "margin": self.margin,
            "delta": None if self.delta is None else round(self.delta, 6),
            "decision": "promote" if self.accepted else "refuse",
        }

    def explain(self) -> str:
        if self.promoted is None:
            return f"run {self.candidate_run} {self.metric}={self.candidate:.4f}; no promoted run yet"
        return (
            f"run {self.candidate_run} {self.metric}={self.candidate:.4f} "
            f"vs promoted run {self.promoted_run} "
            f"{self.metric}={self.promoted:.4f} (delta {self.delta:+.4f}, margin {self.margin:g})"
        )


# ---------------------------------------------------------------- the gate


@dataclass(frozen=True)
class Candidate:
    run_id: str
    uri: str
    value: float
    # the run's ticket index (index/index.json), which moves with the model
    index: dict[str, Any] | None = None


def promote(loaded: LoadedConfig, run_id: str) -> dict[str, Any]:
    """Compare the run's metrics with the promoted run's; move the pointer or raise PromotionRefused.
    Either way, refresh history.json and history.png at the output root (job/fleet/history.py).

    Returns the pointer as written (or as found, when `run_id` is already the promoted run).
    Raises RunStateError when the run is not finished or fails verification, ConfigError when the
    metric does not exist or promote.pointer is not a plain key at the output root.
    """
    try:
        pointer = decide_and_move(loaded, run_id)
    except PromotionRefused:
        _refresh_history(loaded, run_id)
        raise
    _refresh_history(loaded, run_id)
    return pointer


def _refresh_history(loaded: LoadedConfig, run_id: str) -> None:
    """The decision stands whatever happens here: a history that cannot be written is a warning,
    not a failure."""
    if not loaded.config.promote.refresh_history:
        return
    try:
        refresh_history(loaded)
    except Exception as exc:  # noqa: BLE001 - a side effect of the decision, which must not turn into exit 1
        get_logger(step="promote", run_id=run_id).warning(
            "history not refreshed", error=str(exc)[:300], error_type=type(exc).__name__
        )


def decide_and_move(loaded: LoadedConfig, run_id: str) -> dict[str, Any]:
    """The gate itself (see promote)."""
    cfg = loaded.config
    metric, margin = cfg.promote.metric, cfg.promote.margin
    log = get_logger(step="promote", run_id=run_id)
    root = open_store(cfg.output.uri.rstrip("/"), cfg.storage)
    key = pointer_key(root, cfg.promote.pointer)
    candidate = read_candidate(root, check_run_id(run_id), metric)
    where = root.where(key)
    jitter = random.Random()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        current = root.read_versioned(key)
        pointer = parse_pointer(current, where)
        if pointer is not None and pointer["run_id"] == run_id:
            log.info("already promoted", pointer=where, value=pointer.get("value"))
            return pointer
        decision = Decision(
            metric,
            run_id,
            candidate.value,
            pointer["run_id"] if pointer else None,
            promoted_value(root, pointer, metric, where),
            margin,
        )
        log.info("comparison", attempt=attempt, **decision.as_log())
        if not decision.accepted:
            raise PromotionRefused(
                f"not promoted: {decision.explain()}; {where} still names {decision.promoted_run}"
            )
        new = new_pointer(candidate, metric, margin, pointer)
        if swap(root, key, to_json(new), current):
            log.info(
                "promoted", pointer=where, previous_run=decision.promoted_run, **{metric: candidate.value}
            )
            return new
        log.info("pointer moved while deciding; comparing again", pointer=where, attempt=attempt)
        time.sleep(jitter.uniform(0, 0.05 * attempt))
    raise StorageError(f"{where} kept changing during {MAX_ATTEMPTS} attempts; try again", transient=True)


def swap(root: Store, key: str, data: bytes, expected: Versioned | None) -> bool:
    """Write the pointer if it still is what was read (absent, or that version); False if it moved."""
    if expected is None:
        return root.create_if_absent(key, data)
    return root.replace_if_unchanged(key, data, expected.version)


def pointer_key(root: Store, pointer: str) -> str:
    """promote.pointer as a key: one name at the top of output.uri, never a run's folder or a file in one.

    The value is not echoed in the error: it came from the user and could be anything."""
    if (
        not pointer
        or "/" in pointer
        or "\\" in pointer
        or pointer.startswith(".")
        or any(ord(c) < 32 for c in pointer)
    ):
        raise ConfigError(
            "promote.pointer must be a file name at the top of output.uri "
            "(no '/', not starting with '.'), so that it can never point into a run"
        )
    if root.list_keys(pointer + "/"):
        raise ConfigError(
            "promote.pointer names a folder under output.uri (a run's?); "
            "it must name a file of its own, e.g. promoted.json"
        )
    return pointer


def read_candidate(root: Store, run_id: str, metric: str) -> Candidate:
    """The finished, verified run's value of `finetuned.<metric>`."""
    run = RunDir(root.child(run_id), run_id)
    if not run.is_finished():
        raise RunStateError(
            f"run {run_id} is not finished ({run.uri}/{MANIFEST} is missing); "
            "only a finished run can be promoted"
        )
    metrics = verified_metrics(run)
    value = metric_value(metrics, metric, f"{run.uri}/{METRICS}")
    if value is None:
        raise PromotionRefused(
            f"not promoted: run {run_id} has no value for {metric} "
            f"(the test split could not score it); see {run.uri}/{METRICS}"
        )
    return Candidate(run_id, run.uri, value, _index_summary(run))


def _index_summary(run: RunDir) -> dict[str, Any] | None:
    """Where the run's ticket index is and what it holds (verified with the rest of the manifest)."""
    if not run.store.exists(INDEX_JSON):
        return None
    described = _parse_json(run.store.read_bytes(INDEX_JSON), f"{run.uri}/{INDEX_JSON}")
    if not isinstance(described, dict):
        raise RunStateError(f"cannot promote run {run.run_id}: {run.uri}/{INDEX_JSON} is not a JSON object")
    return {"uri": f"{run.uri}/index/", "rows": described.get("rows"), "dim": described.get("dim")}


def verified_metrics(run: RunDir) -> dict[str, Any]:
    """The run's metrics.json, after checking the run against its manifest: the manifest names this
    run, lists metrics.json and every file under model/, and each listed file has its size and sha256."""
    where = f"{run.uri}/{MANIFEST}"
    files = manifest_files(run, where)
    stored = dict(run.store.list_keys(""))
    listed_model = {path for path in files if path.startswith(MODEL)}
    unlisted = sorted(path for path in stored if path.startswith(MODEL) and path not in listed_model)
    if unlisted:
        raise RunStateError(
            f"cannot promote run {run.run_id}: {run.uri}/{unlisted[0]} is not in {where} "
            f"({len(unlisted)} unlisted file(s) under {MODEL})"
        )
    metrics: Any = None
    with tempfile.TemporaryDirectory(prefix="promote-") as scratch:
        for path, record in sorted(files.items()):
            local = check_file(run, path, record, stored.get(path), Path(scratch))
            if path == METRICS:  # parsed from the very bytes that were checked
                metrics = _parse_json(local.read_bytes(), f"{run.uri}/{METRICS}")
    if not isinstance(metrics, dict):
        raise RunStateError(f"cannot promote run {run.run_id}: {run.uri}/{METRICS} is not a JSON object")
    return metrics


def manifest_files(run: RunDir, where: str) -> dict[str, FileRecord]:
    """The manifest's file records by path, after checking it names this run and lists what
    promotion needs."""
    files = run.manifest_records(f"cannot promote run {run.run_id}")
    if METRICS not in files:
        raise RunStateError(f"cannot promote run {run.run_id}: {where} does not list {METRICS}")
    if not any(path.startswith(MODEL) for path in files):
        raise RunStateError(f"cannot promote run {run.run_id}: {where} lists no {MODEL} files")
    return files


def check_file(run: RunDir, path: str, record: FileRecord, stored_size: int | None, scratch: Path) -> Path:
    """Download one listed file into `scratch` and check its size and sha256 against the manifest's record."""
    problem = f"cannot promote run {run.run_id}: {run.uri}/{path}"
    if stored_size is None:
        raise RunStateError(f"{problem} is missing (listed in {MANIFEST})")
    if stored_size != record.size:
        raise RunStateError(f"{problem} has {stored_size} bytes, {MANIFEST} says {record.size}")
    local = scratch / "file"
    run.store.download_file(path, local)
    if sha256_file(local) != record.sha256:
        raise RunStateError(
            f"{problem} does not match the sha256 in {MANIFEST} (changed after the run finished)"
        )
    return local


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RunStateError(f"{where} is not valid JSON ({type(exc).__name__})") from None


def metric_value(metrics: dict[str, Any], metric: str, where: str) -> float | None:
    """`metrics['finetuned'][metric]` as a float in METRIC_RANGE; None when the run could not compute it
    (null)."""
    finetuned = metrics.get("finetuned")
    if not isinstance(finetuned, dict):
        raise RunStateError(f"{where} has no 'finetuned' section")
    if metric not in finetuned:
        known = sorted(
            k for k, v in finetuned.items() if isinstance(v, int | float) and not isinstance(v, bool)
        )
        raise ConfigError(f"promote.metric '{metric}' is not in {where}; expected one of: {', '.join(known)}")
    value = finetuned[metric]
    if value is None:
        return None
    return checked_value(value, f"{where}: finetuned.{metric}")


def checked_value(value: Any, what: str) -> float:
    """`value` as a float, if it is a finite number in METRIC_RANGE; RunStateError saying what it is
    otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RunStateError(f"{what} is not a number")
    if not math.isfinite(value):
        raise RunStateError(f"{what} is not a finite number")
    low, high = METRIC_RANGE
    if not low <= value <= high:
        raise RunStateError(
            f"{what} is outside [{low:g}, {high:g}], the range of every metric the job writes"
        )
    return float(value)


def promoted_value(root: Store, pointer: dict[str, Any] | None, metric: str, where: str) -> float | None:
    """The promoted run's value of `metric`: from the pointer, or its metrics.json if it was judged on
    another metric."""
    if pointer is None:
        return None
    if pointer.get("metric") == metric:
        try:
            return checked_value(pointer.get("value"), f"{where}: value")
        except RunStateError as exc:  # an edited pointer must not refuse every later run
            raise RunStateError(f"{exc}; fix or delete it to promote again") from None
    run_id = check_run_id(pointer["run_id"])
    run = RunDir(root.child(run_id), run_id)
    if not run.store.exists(METRICS):
        raise RunStateError(
            f"cannot compare on {metric}: the promoted run {run_id} was judged on "
            f"{pointer.get('metric')} and {run.uri}/{METRICS} is gone"
        )
    value = metric_value(run.read_json(METRICS), metric, f"{run.uri}/{METRICS}")
    if value is None:
        raise RunStateError(f"cannot compare on {metric}: the promoted run {run_id} has no value for it")
    return value


def new_pointer(
    candidate: Candidate, metric: str, margin: float, previous: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "run_id": candidate.run_id,
        "uri": candidate.uri,
        "metric": metric,
        "value": candidate.value,
        "margin": margin,
        # One pointer for the model and the vectors it made: a consumer never pairs a new model with old ones.
        "index": candidate.index,
        "promoted_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "previous": None
        if previous is None
        else {k: previous.get(k) for k in ("run_id", "metric", "value", "promoted_at")},
        "promoted_before": promoted_before(previous),
    }


def promoted_before(previous: dict[str, Any] | None) -> list[str]:
    """Every run the pointer named before, oldest first (the history marks them); carried from pointer to
    pointer, so the compare-and-swap that moves the pointer keeps the list consistent with it."""
    if previous is None:
        return []
    earlier = previous.get("promoted_before")
    runs = [r for r in earlier if isinstance(r, str)] if isinstance(earlier, list) else []
    return [*runs, previous["run_id"]]
