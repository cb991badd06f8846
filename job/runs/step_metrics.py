"""Each step's key numbers as one small file each, for the orchestrator to pick up.

With `runtime.metrics_dir` set, a step that is done (just now, or by an earlier attempt whose
record it reuses) writes `<metrics_dir>/<name>` holding one number as text. Argo reads each file
as an output parameter (`valueFrom.path`) and turns it into a Prometheus metric of the workflow
(argo/finetune-template.yaml), so an existing Grafana shows the trend without a new service.
A number the run could not compute is written as `NaN`, which Prometheus takes as "no value".

The names are defined here once; tests/test_manifests.py checks the workflow reads exactly these.
"""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path

from job.errors import ConfigError
from job.runs.records import RunResults

# What each step writes: file name -> what the number is.
STEP_METRICS: dict[str, dict[str, str]] = {
    "prepare": {
        "input_tickets": "tickets in the inputs",
        "input_links": "links in the inputs",
        "drift_warnings": "input changes past a drift.* bound against the promoted run",
    },
    "train": {
        "train_seconds": "seconds spent training",
        "train_pairs_per_second": "training rows per second",
    },
    "evaluate": {
        "promote_metric": "the fine-tuned model's promote.metric on the test split",
        "recall_at_10": "the fine-tuned model's recall@10 on the test split",
        "hybrid_recall_at_10": "recall@10 of the fine-tuned model fused with BM25 on the test split",
        "average_precision": "the fine-tuned model's average precision on the test split",
    },
}


def step_numbers(step: str, results: RunResults, promote_metric: str) -> dict[str, float | None]:
    """The numbers `step` publishes, taken from its recorded results."""
    if step == "prepare":
        warnings = results.drift_warnings
        return {
            "input_tickets": results.inputs.get("tickets"),
            "input_links": results.inputs.get("links"),
            "drift_warnings": None if warnings is None else len(warnings),
        }
    if step == "train":
        return {
            "train_seconds": results.training.get("train_seconds"),
            "train_pairs_per_second": results.training.get("pairs_per_second"),
        }
    if step == "evaluate":
        finetuned = results.model_metrics("finetuned")
        return {
            "promote_metric": finetuned.get(promote_metric),
            "recall_at_10": finetuned.get("recall_at_10"),
            "hybrid_recall_at_10": finetuned.get("hybrid_recall_at_10"),
            "average_precision": finetuned.get("average_precision"),
        }
    return {}


def as_text(value: float | None) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "NaN"
    return repr(round(float(value), 6))


def write_step_metrics(folder: Path, numbers: dict[str, float | None]) -> list[Path]:
    """One file per number under `folder`, each replaced whole (a reader never sees half a number)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"runtime.metrics_dir {folder}: cannot create it ({exc.strerror})") from exc
    written = []
    for name, value in numbers.items():
        path = folder / name
        tmp = folder / f".{name}.tmp-{secrets.token_hex(4)}"
        try:
            tmp.write_text(as_text(value) + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"runtime.metrics_dir {folder}: cannot write {name} ({exc.strerror})") from exc
        written.append(path)
    return written
