"""The run directory: its layout, per-step records, training_metadata.json and the manifest.

A run is finished when `manifest.json` exists; it is written last, after every file it lists
has been written and verified, so a reader never mistakes a half-written run for a finished
one. Each step records the files it wrote (size, sha256) in `steps/<step>.json`; whichever
step completes the set writes the metadata and the manifest (evaluate and classify may run
in parallel pods, and each writes its own record before checking, so one of them always sees both).
"""

from __future__ import annotations

import json
import platform
import secrets
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from job.errors import RunStateError
from job.storage import FileRecord, Store, check_key

MANIFEST = "manifest.json"
METADATA = "training_metadata.json"
METRICS = "metrics.json"
STEPS = ("prepare", "train", "evaluate", "classify")


def new_run_id() -> str:
    """UTC timestamp plus a short random suffix: sortable, and unique across parallel starts."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def check_run_id(run_id: str) -> str:
    """A run id is one path segment of letters, digits, '-', '_' and '.', never '.' or '..'."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    if not run_id or len(run_id) > 128 or set(run_id) - allowed or run_id in (".", "..") or run_id.startswith("."):
        raise RunStateError(
            f"invalid run id {run_id!r}: use 1-128 letters, digits, '-', '_' or '.', not starting with '.'")
    return check_key(run_id)


def to_jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def from_jsonl(data: bytes) -> list[dict[str, Any]]:
    # split("\n"), not splitlines(): U+2028 inside a ticket's text is not a record boundary.
    return [json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip()]


def to_json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")


@dataclass
class StepRecord:
    step: str
    started: str
    finished: str
    duration_s: float
    files: list[FileRecord] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    # The process's peak resident memory so far (in `run`, steps share a process): sizes pod limits.
    peak_rss_mb: float | None = None


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

    def begin_step(self, step: str, force: bool, needs: tuple[str, ...] = ()) -> None:
        """Refuse to touch a finished run without `force`; insist the earlier steps are done."""
        if self.is_finished():
            if not force:
                raise RunStateError(f"run {self.run_id} is finished ({self.uri}/{MANIFEST} exists); "
                                    "pass --force to overwrite it, or use a new run id")
            self.store.delete(MANIFEST)
        self.require(step, needs)

    def require(self, step: str, needs: tuple[str, ...]) -> None:
        """Fail clearly when an earlier step has not recorded itself as done."""
        for earlier in needs:
            if not self.store.exists(f"steps/{earlier}.json"):
                raise RunStateError(f"step '{step}' of run {self.run_id} needs step '{earlier}' first "
                                    f"({self.uri}/steps/{earlier}.json is missing)")

    def write_json(self, key: str, value: Any) -> FileRecord:
        return self.store.write_bytes(key, to_json(value))

    def read_json(self, key: str) -> Any:
        return json.loads(self.store.read_bytes(key))

    def record_step(self, record: StepRecord) -> None:
        self.write_json(f"steps/{record.step}.json", asdict(record))

    def step_record(self, step: str) -> dict[str, Any] | None:
        return self.read_json(f"steps/{step}.json") if self.store.exists(f"steps/{step}.json") else None

    def finish_if_complete(self, required: tuple[str, ...], config: dict[str, Any]) -> bool:
        """Write training_metadata.json, metrics.json and, last, manifest.json once every
        required step has recorded itself. Returns True when the run is now finished."""
        records = {step: self.step_record(step) for step in required}
        if any(r is None for r in records.values()):
            return False
        files: dict[str, dict[str, Any]] = {}
        for step in required:
            for f in records[step]["files"]:  # type: ignore[index]
                files[f["path"]] = f
        metrics = self._merged_metrics(records)
        files[METRICS] = asdict(self.write_json(METRICS, metrics))
        files[METADATA] = asdict(self.write_json(METADATA, build_metadata(self.run_id, config, records)))
        for step in required:
            key = f"steps/{step}.json"
            data = self.store.read_bytes(key)
            files[key] = asdict(FileRecord(key, len(data), _sha(data)))
        self._verify_sizes(files)
        manifest = {"run_id": self.run_id, "created": _now(),
                    "files": [files[path] for path in sorted(files) if not path.startswith("checkpoints/")]}
        self.write_json(MANIFEST, manifest)
        return True

    def _merged_metrics(self, records: dict[str, Any]) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        if records.get("evaluate"):
            metrics.update(self.read_json("evaluate/metrics.json"))
        if records.get("classify"):
            metrics["classifier"] = self.read_json("classifier/metrics.json")
        return metrics

    def _verify_sizes(self, files: dict[str, dict[str, Any]]) -> None:
        stored = dict(self.store.list_keys(""))
        for path, record in files.items():
            if stored.get(path) != record["size"]:
                raise RunStateError(f"run {self.run_id}: {path} is missing or has the wrong size "
                                    f"({stored.get(path)} bytes, expected {record['size']}); rerun the step that writes it")




def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StepTimer:
    """Times one step and builds its record."""

    def __init__(self, step: str) -> None:
        self.step, self.started, self.t0 = step, _now(), time.monotonic()

    def record(self, files: list[FileRecord], info: dict[str, Any]) -> StepRecord:
        return StepRecord(self.step, self.started, _now(), round(time.monotonic() - self.t0, 3), files, info,
                          _peak_rss_mb())


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def environment_info(device: str | None = None) -> dict[str, Any]:
    """Versions of everything that can change a result, and the hardware it ran on."""
    import importlib.metadata as md

    import torch

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {name: version(name) for name in (
            "torch", "sentence-transformers", "transformers", "scikit-learn", "numpy", "imbalanced-learn",
            "boto3", "ticket-finetune-job")},
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "git_revision": git_revision(),
    }
    return info


def git_revision() -> str | None:
    """The source revision: baked into images as a file next to the package, else from git."""
    stamp = Path(__file__).with_name("GIT_REVISION")
    if stamp.exists():
        return stamp.read_text().strip() or None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def build_metadata(run_id: str, config: dict[str, Any], records: dict[str, Any]) -> dict[str, Any]:
    prepare, train = records.get("prepare") or {}, records.get("train") or {}
    return {
        "run_id": run_id,
        "created": _now(),
        "config": config,
        "seed": config.get("train", {}).get("seed"),
        "environment": train.get("info", {}).get("environment"),
        "inputs": prepare.get("info", {}).get("inputs"),
        "split": prepare.get("info", {}).get("split"),
        "pairs": prepare.get("info", {}).get("pairs"),
        "training": {k: v for k, v in train.get("info", {}).items() if k != "environment"},
        "timings_s": {step: (records.get(step) or {}).get("duration_s") for step in STEPS if records.get(step)},
    }
