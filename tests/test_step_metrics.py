"""job/runs/step_metrics.py: the numbers each step hands to Argo, one file each.

The workflow contract (test_workflow_contract.py) checks the same files end to end, read back as
output parameters and emitted as Prometheus metrics; here, the edge cases without pods.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from job.errors import ConfigError
from job.runs.records import RunResults
from job.runs.step_metrics import STEP_METRICS, as_text, step_numbers, write_step_metrics

RECORDS = {
    "prepare": {"inputs": {"tickets": 333, "links": 158}, "drift": {"warnings": [{"measure": "tickets"}]}},
    "train": {"train_seconds": 81.25, "pairs_per_second": 12.5},
    "evaluate": {
        "metrics": {"finetuned": {"average_precision": 0.8125, "recall_at_10": None, "roc_auc": 0.9}}
    },
}


def test_each_step_publishes_the_numbers_it_declares_from_its_record() -> None:
    numbers = {
        step: step_numbers(step, RunResults({step: RECORDS[step]}), "roc_auc") for step in STEP_METRICS
    }
    assert {step: set(values) for step, values in numbers.items()} == {
        s: set(f) for s, f in STEP_METRICS.items()
    }
    assert numbers["prepare"] == {"input_tickets": 333, "input_links": 158, "drift_warnings": 1}
    assert numbers["train"] == {"train_seconds": 81.25, "train_pairs_per_second": 12.5}
    assert numbers["evaluate"] == {
        "promote_metric": 0.9,
        "recall_at_10": None,
        "hybrid_recall_at_10": None,
        "average_precision": 0.8125,
    }
    assert step_numbers("classify", RunResults({}), "roc_auc") == {}
    no_drift = step_numbers(
        "prepare", RunResults({"prepare": {"inputs": {}, "drift": {"skipped": "no promoted run"}}}), "x"
    )
    assert no_drift["drift_warnings"] is None


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.8125, "0.8125"), (333, "333.0"), (None, "NaN"), (float("inf"), "NaN"), (True, "NaN"), ("0.5", "NaN")],
)
def test_numbers_are_written_as_prometheus_reads_them(value: object, text: str) -> None:
    assert as_text(value) == text  # type: ignore[arg-type]


def test_files_hold_one_number_each_and_are_replaced_whole(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    write_step_metrics(folder, {"recall_at_10": 0.5, "average_precision": None})
    write_step_metrics(folder, {"recall_at_10": 0.75})
    # no temp files left
    assert sorted(p.name for p in folder.iterdir()) == ["average_precision", "recall_at_10"]
    assert (folder / "recall_at_10").read_text() == "0.75\n"
    unset = float((folder / "average_precision").read_text())
    assert unset != unset  # NaN, the one value unequal to itself


def test_an_unwritable_metrics_dir_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="runtime.metrics_dir"):
        write_step_metrics(tmp_path / "file" / "metrics", {"recall_at_10": 0.5})
