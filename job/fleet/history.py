"""Every run under output.uri in one table and one plot: is the weekly model getting better?

`read_history` lists the run folders at the output root (through the Store, so local and S3
alike), and reads what each run recorded: when it started (steps/prepare.json), whether it
finished (manifest.json), its metrics (metrics.json, or evaluate's own file for a run that has
not finished), its input counts and drift warnings (the prepare record). The promotion pointer
says which run is promoted now and which were before. `refresh_history` writes the result as
`history.json` and `history.png` at the output root; `finetune-job history` and `promote` call it.

A run whose files cannot be read is listed with the problem, never dropped and never fatal:
the history of fifty good runs must not vanish because one folder is damaged.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from job.config import LoadedConfig
from job.errors import JobError, RunStateError
from job.evaluation import plots
from job.jsonio import to_json
from job.log import get_logger
from job.runs.artifacts import MANIFEST, METRICS, check_run_id
from job.runs.records import RunResults
from job.storage import Store, Versioned, open_store

HISTORY_JSON = "history.json"
HISTORY_PLOT = "history.png"
# Besides the promotion metric, the numbers every row shows (keys of metrics.json's "finetuned").
KEY_METRICS = ("recall_at_10", "mrr", "average_precision")


@dataclass
class RunSummary:
    """One run as the history shows it."""

    run_id: str
    started: str | None = None
    finished: bool = False
    promoted: str = ""  # "current", "before" (named in the pointer's history) or ""
    metrics: dict[str, float | None] = field(default_factory=dict)  # fine-tuned model, on the test split
    base_metrics: dict[str, float | None] = field(default_factory=dict)
    tickets: int | None = None
    links: int | None = None
    drift_warnings: list[str] = field(default_factory=list)
    index_rows: int | None = None  # tickets in the run's index (index step)
    index_mb: float | None = None
    problem: str | None = None


@dataclass
class History:
    metric: str
    promoted_run: str | None
    runs: list[RunSummary]
    generated: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def as_json(self) -> dict[str, Any]:
        return {
            "generated": self.generated,
            "metric": self.metric,
            "promoted_run": self.promoted_run,
            "runs": [asdict(run) for run in self.runs],
        }

    def table(self) -> str:
        """The runs, oldest first, as fixed-width text."""
        columns = [
            "run id",
            "started",
            "finished",
            "promoted",
            self.metric,
            "recall@10",
            "MRR",
            "AP",
            "tickets",
            "links",
            "index",
            "drift",
        ]
        rows = [
            [
                run.run_id,
                (run.started or "-")[:16],
                "yes" if run.finished else "no",
                run.promoted or "-",
                _number(run.metrics.get(self.metric)),
                _number(run.metrics.get("recall_at_10")),
                _number(run.metrics.get("mrr")),
                _number(run.metrics.get("average_precision")),
                _count(run.tickets),
                _count(run.links),
                "-" if run.index_rows is None else f"{run.index_rows}/{run.index_mb:.0f}MB",
                ",".join(run.drift_warnings) or "-",
            ]
            for run in self.runs
        ]
        widths = [max(len(str(cell)) for cell in column) for column in zip(columns, *rows, strict=True)]
        lines = [
            "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in [columns, *rows]
        ]
        lines += [f"  {run.run_id}: {run.problem}" for run in self.runs if run.problem]
        return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


# ---------------------------------------------------------------- reading


def read_history(root: Store, metric: str, pointer_key: str) -> History:
    """Every run folder under `root`, oldest first (runs that never started a step last)."""
    current, before = promoted_runs(root, pointer_key)
    runs = []
    for name in root.list_folders():
        try:
            run_id = check_run_id(name)
        except JobError:
            continue  # not a folder the job would have made
        summary = read_run(root.child(run_id), run_id, metric)
        summary.promoted = "current" if run_id == current else "before" if run_id in before else ""
        runs.append(summary)
    runs.sort(key=lambda run: (run.started is None, run.started or "", run.run_id))
    return History(metric, current, runs)


def promoted_runs(root: Store, pointer_key: str) -> tuple[str | None, set[str]]:
    """The promoted run and those promoted before it, from the pointer (nothing if it is absent or unreadable:
    promote reports a damaged pointer; the history still lists the runs)."""
    try:
        pointer = parse_pointer(root.read_versioned(pointer_key), pointer_key)
    except RunStateError:
        return None, set()
    if pointer is None:
        return None, set()
    earlier = pointer.get("promoted_before")
    before = {r for r in earlier if isinstance(r, str)} if isinstance(earlier, list) else set()
    previous = pointer.get("previous")
    if isinstance(previous, dict) and isinstance(previous.get("run_id"), str):
        before.add(previous["run_id"])
    return pointer["run_id"], before


def parse_pointer(current: Versioned | None, where: str) -> dict[str, Any] | None:
    """The promotion pointer as read (None when there is none); RunStateError naming `where` when it is not
    JSON or names no run. Read here only: promote refuses such a pointer, the history and drift skip it."""
    if current is None:
        return None
    try:
        pointer = json.loads(current.data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RunStateError(
            f"{where} is not valid JSON ({type(exc).__name__}); fix or delete it to promote again"
        ) from None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("run_id"), str):
        raise RunStateError(f"{where} does not name a run (no 'run_id'); fix or delete it to promote again")
    return pointer


def read_run(run: Store, run_id: str, metric: str) -> RunSummary:
    summary = RunSummary(run_id)
    try:
        keys = {key for key, _ in run.list_keys("")}
        summary.finished = MANIFEST in keys
        records = {
            step: record
            for step in ("prepare", "index")
            if f"steps/{step}.json" in keys and isinstance(record := _json(run, f"steps/{step}.json"), dict)
        }
        results = RunResults({step: _section(record, "info") for step, record in records.items()})
        if "prepare" in records:
            started = records["prepare"].get("started")
            summary.started = started if isinstance(started, str) else None
            summary.tickets, summary.links = (
                _int(results.inputs.get("tickets")),
                _int(results.inputs.get("links")),
            )
            summary.drift_warnings = [str(w.get("measure")) for w in results.drift_warnings or []]
        if "index" in records:
            summary.index_rows, size = _int(results.index.get("rows")), _int(results.index.get("size_bytes"))
            summary.index_mb = None if size is None else round(size / 1e6, 1)
        metrics_key = METRICS if summary.finished else "evaluate/metrics.json"
        if metrics_key in keys:
            metrics = _json(run, metrics_key)
            summary.metrics = _picked(metrics, "finetuned", metric)
            summary.base_metrics = _picked(metrics, "base", metric)
    except (JobError, ValueError, TypeError, KeyError, AttributeError) as exc:
        summary.problem = f"cannot read the run's records ({type(exc).__name__}: {str(exc)[:200]})"
    return summary


def _json(run: Store, key: str) -> Any:
    try:
        return json.loads(run.read_bytes(key))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{key} is not valid JSON ({type(exc).__name__})") from None


def _section(record: dict[str, Any], key: str) -> dict[str, Any]:
    value = record.get(key)
    return value if isinstance(value, dict) else {}


# Every quality metric the job writes is a correlation, a rate or a probability: anything else was edited.
METRIC_RANGE = (-1.0, 1.0)


def _picked(metrics: Any, model: str, metric: str) -> dict[str, float | None]:
    """The metrics a row shows; one outside METRIC_RANGE (an edited file) is no number (ValueError: the run
    is listed as damaged, never plotted)."""
    section = metrics.get(model) if isinstance(metrics, dict) else None
    if not isinstance(section, dict):
        return {}
    picked = {key: _float(section.get(key)) for key in dict.fromkeys((metric, *KEY_METRICS))}
    low, high = METRIC_RANGE
    bad = sorted(key for key, value in picked.items() if value is not None and not low <= value <= high)
    if bad:
        raise ValueError(f"{model}.{bad[0]} in metrics.json is not a finite number in [{low:g}, {high:g}]")
    return picked


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else float("inf")  # not finite: out of range above


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---------------------------------------------------------------- writing


def write_history(root: Store, history: History, scratch: Path) -> None:
    """history.json and history.png at the top of `root`."""
    root.write_bytes(HISTORY_JSON, to_json(history.as_json()))
    plot = plots.history(history.runs, history.metric, scratch / HISTORY_PLOT)
    root.upload_file(plot, HISTORY_PLOT)


def refresh_history(loaded: LoadedConfig) -> History:
    """Read every run under output.uri and write history.json and history.png beside them."""
    cfg = loaded.config
    root = open_store(cfg.output.uri.rstrip("/"), cfg.storage)
    history = read_history(root, cfg.promote.metric, cfg.promote.pointer)
    if cfg.runtime.work_dir:
        Path(cfg.runtime.work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="history-", dir=cfg.runtime.work_dir or None) as scratch:
        write_history(root, history, Path(scratch))
    get_logger(step="history").info(
        "history written",
        runs=len(history.runs),
        promoted_run=history.promoted_run,
        unfinished=sum(not run.finished for run in history.runs),
        json=root.where(HISTORY_JSON),
        plot=root.where(HISTORY_PLOT),
    )
    return history
