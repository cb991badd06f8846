"""What a step records (steps/<step>.json: StepRecord) and its results read back in one place (RunResults):
the card, the run's metadata, the step metrics and history ask RunResults for a section instead of walking a
record's keys. A section an older run did not write reads as empty."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from job.runs.fingerprint import Fingerprint
from job.storage import FileRecord

Section = dict[str, Any]  # one part of a step's results, as JSON


@dataclass
class StepRecord:
    """What a step recorded in steps/<step>.json: when, the files it wrote, what it was made from, where its
    time went, and `info`, the step's own results (read through job/runs/results.py)."""

    step: str
    started: str
    finished: str
    duration_s: float
    files: list[FileRecord] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    # The process's peak resident memory so far (in `run`, steps share a process): sizes pod limits.
    peak_rss_mb: float | None = None
    # What the step was made from; a rerun reuses the step only if this is unchanged.
    fingerprint: Fingerprint | None = None
    # Seconds per phase (load, encode, fit, ...; job/profile.py): where the step's time went.
    phases_s: dict[str, float] = field(default_factory=dict)
    # how often each was entered (models loaded: `load`)
    phase_counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> StepRecord:
        """A record read back; ValueError when it has no list of valid file records. Fields an older version
        of the job did not write read as empty."""
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, list) or not all(is_file_record(f) for f in files):
            raise ValueError("no list of files with path, size and sha256")
        return cls(
            step=str(data.get("step", "")),
            started=str(data.get("started", "")),
            finished=str(data.get("finished", "")),
            duration_s=_number(data.get("duration_s")) or 0.0,
            files=[file_record(f) for f in files],
            info=_mapping(data.get("info")),
            peak_rss_mb=_number(data.get("peak_rss_mb")),
            fingerprint=Fingerprint.from_json(data.get("fingerprint")),
            phases_s={str(k): v for k, v in _mapping(data.get("phases_s")).items() if _number(v) is not None},
            phase_counts={
                str(k): v for k, v in _mapping(data.get("phase_counts")).items() if isinstance(v, int)
            },
        )

    def file_records(self) -> dict[str, FileRecord]:
        return {f.path: f for f in self.files}


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def is_file_record(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("path"), str)
        and isinstance(entry.get("sha256"), str)
        and isinstance(entry.get("size"), int)
        and not isinstance(entry.get("size"), bool)
    )


def file_record(entry: dict[str, Any]) -> FileRecord:
    """A file record read back (checked with is_file_record first)."""
    return FileRecord(entry["path"], entry["size"], entry["sha256"])


@dataclass(frozen=True)
class RunResults:
    """The `info` of each recorded step of a run, by what readers ask of it."""

    steps: Mapping[str, Section]
    durations_s: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, records: Mapping[str, StepRecord | None]) -> RunResults:
        recorded = {name: r for name, r in records.items() if r is not None}
        return cls(
            {name: r.info for name, r in recorded.items()},
            {name: r.duration_s for name, r in recorded.items()},
        )

    def _section(self, step: str, key: str) -> Section:
        return _mapping(self.steps.get(step, {}).get(key))

    # prepare
    @property
    def inputs(self) -> Section:
        """What was read: tickets, links, files, tickets per project, links per relation, skipped rows."""
        return self._section("prepare", "inputs")

    @property
    def split(self) -> Section:
        return self._section("prepare", "split")

    @property
    def pairs(self) -> Section:
        return self._section("prepare", "pairs")

    @property
    def drift(self) -> Section:
        return self._section("prepare", "drift")

    @property
    def drift_warnings(self) -> list[Section] | None:
        """The bounds drift passed; None when drift was not measured (no promoted run, an older run)."""
        warnings = self.drift.get("warnings")
        return [w for w in warnings if isinstance(w, dict)] if isinstance(warnings, list) else None

    # train
    @property
    def training(self) -> Section:
        """train's own numbers (steps, seconds, rows/s, precision, loss curve), without the environment."""
        return {k: v for k, v in self.steps.get("train", {}).items() if k != "environment"}

    @property
    def environment(self) -> Section:
        return self._section("train", "environment")

    @property
    def base_model(self) -> Section:
        """The base model as trained: attention, max_seq_length, base_revision."""
        return self._section("train", "model")

    # index
    @property
    def index(self) -> Section:
        return dict(self.steps.get("index", {}))

    # evaluate
    @property
    def metrics(self) -> Section:
        """evaluate/metrics.json: base, finetuned, lexical, fusion, delta, exports."""
        return self._section("evaluate", "metrics")

    def model_metrics(self, model: str) -> Section:
        """One model's test metrics: "base", "finetuned" or "lexical"."""
        return _mapping(self.metrics.get(model))

    @property
    def fusion(self) -> Section:
        """How the fine-tuned model is fused with BM25 (method, weight, chosen_on, pair_score)."""
        return _mapping(_mapping(self.metrics.get("fusion")).get("finetuned"))

    @property
    def exports(self) -> Section | None:
        """Which CPU variants were written next to the model, and why any was not."""
        exports = self.metrics.get("exports")
        return exports if isinstance(exports, dict) else None

    # classify
    @property
    def classifier(self) -> Section | None:
        """classifier/metrics.json, or None when classify did not run."""
        metrics = self.steps.get("classify", {}).get("metrics")
        return metrics if isinstance(metrics, dict) else None
