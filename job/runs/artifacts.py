"""The run directory: its layout, per-step records, training_metadata.json and the manifest.

A run is finished when `manifest.json` exists; it is written last, after every file it lists
has been written and verified, so a reader never mistakes a half-written run for a finished
one. Each step records the files it wrote (size, sha256) and its fingerprint (what it was made
from) in `steps/<step>.json`; whichever step completes the set writes the metadata and the
manifest (evaluate and classify may run in parallel pods, and each writes its own record before
checking, so one of them always sees both).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from job.errors import RunStateError
from job.jsonio import to_json
from job.profile import phase, start_step
from job.runs.fingerprint import Fingerprint
from job.runs.records import RunResults, StepRecord, file_record, is_file_record
from job.runs.steps import STEP_NAMES, Step, dependents, prerequisites
from job.storage import FileRecord, Store, check_key, sha256_file

MANIFEST = "manifest.json"
METADATA = "training_metadata.json"
METRICS = "metrics.json"


def new_run_id() -> str:
    """UTC timestamp plus a short random suffix: sortable, and unique across parallel starts."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


# Beside the runs, the top of output.uri holds the job's own files: the promotion pointer (promoted.json by
# default), history.json and history.png. A run id ending like one of them could take its place.
RESERVED_SUFFIXES = (".json", ".png")


def check_run_id(run_id: str) -> str:
    """A run id is one path segment of letters, digits, '-', '_' and '.', never '.' or '..', and never
    a name of the files kept beside the runs (`*.json`, `*.png`)."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    if (
        not run_id
        or len(run_id) > 128
        or set(run_id) - allowed
        or run_id in (".", "..")
        or run_id.startswith(".")
    ):
        raise RunStateError(
            f"invalid run id {run_id!r}: use 1-128 letters, digits, '-', '_' or '.', not starting with '.'"
        )
    if run_id.lower().endswith(RESERVED_SUFFIXES):
        raise RunStateError(
            f"invalid run id {run_id!r}: names ending in .json or .png are kept for "
            "the files beside the runs (promoted.json, history.json, history.png)"
        )
    return check_key(run_id)


class RunDir:
    """A run's files in its store, with the rules for starting, recording and finishing steps."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.run_id = check_run_id(run_id)
        self.store = store

    @property
    def uri(self) -> str:
        return self.store.uri

    def is_finished(self) -> bool:
        return self.store.exists(MANIFEST)

    def refuse_or_reopen_finished(self, force: bool) -> None:
        """A finished run is refused without `force`; with it, its manifest goes: the run is unfinished
        again."""
        if self.is_finished():
            if not force:
                raise RunStateError(
                    f"run {self.run_id} is finished ({self.uri}/{MANIFEST} exists); "
                    "pass --force to overwrite it, or use a new run id"
                )
            self.store.delete(MANIFEST)

    def begin_step(self, step: Step, force: bool, config_sha256: str) -> None:
        """Refuse to touch a finished run without `force`; insist the earlier steps are done, with
        this config unless `force`. The step's own record and those of the steps built on it go:
        until it records itself again, a rerun must not take over files it is rewriting."""
        self.refuse_or_reopen_finished(force)
        self.require(step, None if force else config_sha256)
        for stale in (step, *dependents(step)):
            self.store.delete(f"steps/{stale.name}.json")

    def require(self, step: Step, config_sha256: str | None = None) -> None:
        """Fail clearly when a step before this one has not recorded itself as done (or, given
        `config_sha256`, was made with another config)."""
        for earlier in prerequisites(step):
            record = self.step_record(earlier.name)
            if record is None:
                raise RunStateError(
                    f"step '{step.name}' of run {self.run_id} needs step '{earlier.name}' "
                    f"first ({self.uri}/steps/{earlier.name}.json is missing)"
                )
            made_with = record.fingerprint.config_sha256 if record.fingerprint else None
            if config_sha256 is not None and made_with != config_sha256:
                raise RunStateError(
                    f"step '{step.name}' of run {self.run_id}: step '{earlier.name}' "
                    "was made with another config; pass --force to use it anyway, "
                    "or use a new run id"
                )

    def write_json(self, key: str, value: Any) -> FileRecord:
        with phase("write"):
            return self.store.write_bytes(key, to_json(value))

    def read_json(self, key: str) -> Any:
        return json.loads(self.store.read_bytes(key))

    def record_step(self, record: StepRecord) -> None:
        self.write_json(f"steps/{record.step}.json", asdict(record))

    def step_record(self, step: str) -> StepRecord | None:
        """The step's record, or None before it recorded itself; a damaged record is an error naming it."""
        key = f"steps/{step}.json"
        if not self.store.exists(key):
            return None
        try:
            return StepRecord.from_json(json.loads(self.store.read_bytes(key)))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise RunStateError(
                f"run {self.run_id}: {self.uri}/{key} is damaged ({type(exc).__name__}); "
                f"redo step '{step}' with --force"
            ) from None
        except ValueError:
            raise RunStateError(
                f"run {self.run_id}: {self.uri}/{key} is not a step record "
                "(no list of files with path, size and sha256); "
                f"redo step '{step}' with --force"
            ) from None

    def taken_over(self, step: Step, key: str) -> bytes:
        """A file `step` wrote, read back and checked against its record (size, sha256): a later step never
        builds on a file edited, truncated or replaced since (RunStateError naming the file and the step)."""
        with phase("read"):
            data = self.store.read_bytes(key)
        self._check_recorded(step, key, len(data), _sha(data))
        return data

    def download_taken_over(self, step: Step, prefix: str, local_dir: Path) -> Path:
        """Every file `step` recorded under `prefix/`, downloaded into `local_dir` and checked against its
        record; files it did not record (left by an older attempt) are not taken."""
        with phase("read"):
            return self._download_checked(
                self._recorded(step),
                prefix,
                local_dir,
                f"step '{step.name}'",
                f"redo step '{step.name}' with --force",
            )

    def download_listed(self, prefix: str, local_dir: Path, purpose: str) -> Path:
        """Every file the finished run's manifest lists under `prefix/`, downloaded and checked
        (size, sha256): what a consumer of a finished run (predict) reads, and nothing the manifest
        does not vouch for."""
        return self._download_checked(
            self.manifest_records(purpose), prefix, local_dir, MANIFEST, "use a run that verifies"
        )

    def _download_checked(
        self, records: dict[str, FileRecord], prefix: str, local_dir: Path, source: str, remedy: str
    ) -> Path:
        wanted = [path for path in records if path.startswith(prefix + "/")]
        if not wanted:
            raise RunStateError(f"run {self.run_id}: {source} lists no file under {prefix}/")
        for path in wanted:
            target = local_dir / check_key(path[len(prefix) + 1 :])
            target.parent.mkdir(parents=True, exist_ok=True)
            listed = records[path]
            if not (target.is_file() and sha256_file(target) == listed.sha256):
                self.store.download_file(path, target)
            size, sha = target.stat().st_size, sha256_file(target)
            if (size, sha) != (listed.size, listed.sha256):
                raise RunStateError(
                    f"run {self.run_id}: {self.uri}/{path} is not the file {source} lists "
                    f"({size} bytes, listed {listed.size}): "
                    f"it changed since; {remedy}"
                )
        return local_dir

    def manifest_records(self, purpose: str) -> dict[str, FileRecord]:
        """The finished run's manifest as file records by path, checked to name this run; `purpose`
        starts each error ("cannot promote run X")."""
        where = f"{self.uri}/{MANIFEST}"
        if not self.is_finished():
            raise RunStateError(f"{purpose}: it is not finished ({where} does not exist)")
        try:
            manifest = json.loads(self.store.read_bytes(MANIFEST))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise RunStateError(f"{where} is not valid JSON ({type(exc).__name__})") from None
        if not isinstance(manifest, dict) or manifest.get("run_id") != self.run_id:
            named = manifest.get("run_id") if isinstance(manifest, dict) else None
            raise RunStateError(
                f"{purpose}: {where} names run {named}, not {self.run_id} (a copied or edited run)"
            )
        records = manifest.get("files")
        if not isinstance(records, list) or not all(is_file_record(r) for r in records):
            raise RunStateError(
                f"{purpose}: {where} has no valid 'files' list (each entry needs path, size and sha256)"
            )
        return {r["path"]: file_record(r) for r in records}

    def _recorded(self, step: Step) -> dict[str, FileRecord]:
        record = self.step_record(step.name)
        if record is None:
            raise RunStateError(f"run {self.run_id}: step '{step.name}' has not recorded itself")
        return record.file_records()

    def _check_recorded(self, step: Step, key: str, size: int, sha256: str) -> None:
        entry = self._recorded(step).get(key)
        if entry is None:
            raise RunStateError(
                f"run {self.run_id}: {self.uri}/{key} is not among the files step '{step.name}' recorded"
            )
        if entry.size != size or entry.sha256 != sha256:
            sha = "matches" if entry.sha256 == sha256 else "differs"
            raise RunStateError(
                f"run {self.run_id}: {self.uri}/{key} is not the file "
                f"step '{step.name}' wrote "
                f"({size} bytes, recorded {entry.size}; sha256 {sha}): "
                "it changed after the step recorded it; "
                f"redo step '{step.name}' with --force"
            )

    def complete_records(self, required: tuple[Step, ...]) -> dict[str, StepRecord] | None:
        """Every required step's record by step name, or None while one is missing."""
        records: dict[str, StepRecord] = {}
        for step in required:
            record = self.step_record(step.name)
            if record is None:
                return None
            records[step.name] = record
        return records

    def finish_if_complete(
        self, required: tuple[Step, ...], config: dict[str, Any], extra_files: tuple[FileRecord, ...] = ()
    ) -> bool:
        """Write training_metadata.json, metrics.json and, last, manifest.json once every
        required step has recorded itself. Returns True when the run is now finished.

        `extra_files`: files written for the finished run itself (the model card), listed too."""
        records = self.complete_records(required)
        if records is None:
            return False
        files: dict[str, FileRecord] = {}
        for record in records.values():
            files.update(record.file_records())
        files.update({f.path: f for f in extra_files})
        metrics = self._merged_metrics(records)
        files[METRICS] = self.write_json(METRICS, metrics)
        files[METADATA] = self.write_json(METADATA, build_metadata(self.run_id, config, records))
        for step in required:
            key = f"steps/{step.name}.json"
            data = self.store.read_bytes(key)
            files[key] = FileRecord(key, len(data), _sha(data))
        self._verify_sizes(files)
        manifest = {
            "run_id": self.run_id,
            "created": _now(),
            "files": [asdict(files[path]) for path in sorted(files) if not path.startswith("checkpoints/")],
        }
        self.write_json(MANIFEST, manifest)
        return True

    def _merged_metrics(self, records: dict[str, StepRecord]) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        if records.get("evaluate"):
            metrics.update(self.read_json("evaluate/metrics.json"))
        if records.get("classify"):
            metrics["classifier"] = self.read_json("classifier/metrics.json")
        return metrics

    def _verify_sizes(self, files: dict[str, FileRecord]) -> None:
        stored = dict(self.store.list_keys(""))
        for path, record in files.items():
            if stored.get(path) != record.size:
                raise RunStateError(
                    f"run {self.run_id}: {path} is missing or has the wrong size "
                    f"({stored.get(path)} bytes, expected {record.size}); "
                    "rerun the step that writes it"
                )


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StepTimer:
    """Times one step and builds its record, stamped with what the step is made from."""

    def __init__(self, step: str, fingerprint: Fingerprint | None = None) -> None:
        self.step, self.started, self.t0 = step, _now(), time.monotonic()
        self.fingerprint = fingerprint
        self.phases = start_step()

    def record(self, files: list[FileRecord], info: dict[str, Any]) -> StepRecord:
        return StepRecord(
            self.step,
            self.started,
            _now(),
            round(time.monotonic() - self.t0, 3),
            files,
            info,
            _peak_rss_mb(),
            self.fingerprint,
            self.phases.rounded(),
            self.phases.counts(),
        )


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def build_metadata(run_id: str, config: dict[str, Any], records: dict[str, StepRecord]) -> dict[str, Any]:
    results = RunResults.of(records)
    return {
        "run_id": run_id,
        "created": _now(),
        "config": config,
        "seed": config.get("train", {}).get("seed"),
        "environment": results.environment or None,
        "inputs": results.inputs or None,
        "split": results.split or None,
        "pairs": results.pairs or None,
        "drift": results.drift or None,
        "training": results.training,
        "exports": results.exports,  # which CPU variants were written next to the model, and why any was not
        "timings_s": {step: results.durations_s[step] for step in STEP_NAMES if step in results.durations_s},
    }
