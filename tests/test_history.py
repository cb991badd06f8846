"""`finetune-job history` over runs laid out by job/runs/artifacts.py, locally and on the loopback S3 server.

Each run is recorded the way the pipeline records one (RunDir.record_step with StepTimer records,
then finish_if_complete, which writes metrics.json, the metadata and the manifest last), without
training: the history reads records, it does not care how the numbers were made. Promotion goes
through the real gate, which refreshes the history itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from job.config import LoadedConfig, load_config
from job.errors import PromotionRefused
from job.fleet.history import HISTORY_JSON, HISTORY_PLOT, History, read_history, refresh_history
from job.fleet.promote import promote
from job.runs.artifacts import RunDir, StepTimer
from job.runs.steps import EVALUATE, INDEX, PREPARE, TRAIN
from job.storage import Store, open_store
from tests.conftest import run_cli
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server


def record_run(
    root: Store,
    run_id: str,
    finetuned: dict[str, float],
    tickets: int,
    *,
    finished: bool = True,
    drift_warnings: tuple[str, ...] = (),
) -> None:
    """A run as the pipeline leaves it: prepare, train and evaluate records, finished or stopped before
    evaluate."""
    run = RunDir(root.child(run_id), run_id)
    timer = StepTimer(PREPARE.name)
    files = [run.store.write_bytes("prepared/split.json", b"{}")]
    run.record_step(
        timer.record(
            files,
            {
                "inputs": {"tickets": tickets, "links": tickets // 3},
                "drift": {"warnings": [{"measure": m} for m in drift_warnings]},
            },
        )
    )
    timer = StepTimer(TRAIN.name)
    files = [
        run.store.write_bytes("model/modules.json", b"[]"),
        run.store.write_bytes("model/model.safetensors", b"w"),
    ]
    run.record_step(timer.record(files, {"train_seconds": 12.5, "pairs_per_second": 40.0}))
    if not finished:
        return
    timer = StepTimer(INDEX.name)
    run.record_step(
        timer.record(
            [run.store.write_bytes("index/index.json", b"{}")],
            {"rows": tickets, "size_bytes": tickets * 10_000},
        )
    )
    timer = StepTimer(EVALUATE.name)
    metrics = {"base": {"average_precision": 0.5, "recall_at_10": 0.6, "mrr": 0.4}, "finetuned": finetuned}
    run.record_step(timer.record([run.write_json("evaluate/metrics.json", metrics)], {"metrics": metrics}))
    assert run.finish_if_complete((PREPARE, TRAIN, INDEX, EVALUATE), {"train": {"seed": 1}})


def scores(ap: float, recall: float, mrr: float) -> dict[str, float]:
    return {"average_precision": ap, "recall_at_10": recall, "mrr": mrr}


JUDGED_ON = {"promote.metric": "average_precision"}


def local_output(folder: Path) -> LoadedConfig:
    # The recorded runs carry pair AP, recall@10 and MRR; they are judged on AP.
    return load_config(environ={}, cli_overrides={"output.uri": str(folder / "runs"), **JUDGED_ON})


def three_runs(loaded: LoadedConfig) -> Store:
    """run-1 promoted first, run-2 better and promoted now, run-3 stopped before evaluate."""
    root = open_store(loaded.config.output.uri, loaded.config.storage)
    record_run(root, "run-1", scores(0.70, 0.80, 0.55), tickets=300)
    record_run(root, "run-2", scores(0.78, 0.90, 0.61), tickets=330, drift_warnings=("tickets",))
    record_run(root, "run-3", scores(0.0, 0.0, 0.0), tickets=360, finished=False)
    promote(loaded, "run-1")
    promote(loaded, "run-2")
    return root


@pytest.fixture(scope="module")
def three_local_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedConfig, Store]:
    """Built once: each promotion renders the plot, which is most of what these tests cost."""
    loaded = local_output(tmp_path_factory.mktemp("history"))
    return loaded, three_runs(loaded)


def check_three_runs(history: History) -> None:
    assert [(r.run_id, r.finished, r.promoted) for r in history.runs] == [
        ("run-1", True, "before"),
        ("run-2", True, "current"),
        ("run-3", False, ""),
    ]
    assert history.promoted_run == "run-2"
    first, second, unfinished = history.runs
    assert second.metrics == {"average_precision": 0.78, "recall_at_10": 0.90, "mrr": 0.61}
    assert second.base_metrics["average_precision"] == 0.5
    assert (first.tickets, first.links, second.drift_warnings) == (300, 100, ["tickets"])
    assert unfinished.metrics == {} and unfinished.tickets == 360 and unfinished.problem is None
    assert first.started is not None and first.started <= second.started <= unfinished.started  # type: ignore[operator]


def test_history_lists_every_run_with_what_it_recorded(three_local_runs: tuple[LoadedConfig, Store]) -> None:
    _, root = three_local_runs
    check_three_runs(read_history(root, "average_precision", "promoted.json"))


def test_history_reads_runs_on_s3_and_promote_writes_it_there(s3: S3Server, bucket: str) -> None:
    overrides = {
        "output.uri": f"s3://{bucket}/runs",
        "storage.endpoint_url": s3.endpoint,
        "storage.access_key_id": ACCESS_KEY,
        "storage.secret_access_key": SECRET_KEY,
    }
    root = three_runs(load_config(environ={}, cli_overrides={**overrides, **JUDGED_ON}))
    check_three_runs(read_history(root, "average_precision", "promoted.json"))
    written = json.loads(root.read_bytes(HISTORY_JSON))
    assert written["promoted_run"] == "run-2" and root.read_bytes(HISTORY_PLOT).startswith(b"\x89PNG")


def test_promote_writes_the_history_and_the_cli_prints_it(
    three_local_runs: tuple[LoadedConfig, Store],
) -> None:
    loaded, root = three_local_runs
    written = json.loads(root.read_bytes(HISTORY_JSON))  # promote refreshed it
    assert written["promoted_run"] == "run-2" and [r["run_id"] for r in written["runs"]] == [
        "run-1",
        "run-2",
        "run-3",
    ]
    assert [r["promoted"] for r in written["runs"]] == ["before", "current", ""]

    plot = root.read_bytes(HISTORY_PLOT)
    root.delete(HISTORY_JSON)
    root.delete(HISTORY_PLOT)
    result = run_cli(
        "history",
        "--output",
        loaded.config.output.uri,
        "--set",
        "promote.metric=average_precision",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith(("run id", "run-"))]
    assert table[0].split() == [
        "run",
        "id",
        "started",
        "finished",
        "promoted",
        "average_precision",
        "recall@10",
        "MRR",
        "AP",
        "tickets",
        "links",
        "index",
        "drift",
    ]
    assert table[1].split()[2:] == [
        "yes",
        "before",
        "0.7000",
        "0.8000",
        "0.5500",
        "0.7000",
        "300",
        "100",
        "300/3MB",
        "-",
    ]
    assert table[2].split()[2:] == [
        "yes",
        "current",
        "0.7800",
        "0.9000",
        "0.6100",
        "0.7800",
        "330",
        "110",
        "330/3MB",
        "tickets",
    ]
    assert table[3].split()[2:] == ["no", "-", "-", "-", "-", "-", "360", "120", "-", "-"]
    assert json.loads(root.read_bytes(HISTORY_JSON))["runs"] == written["runs"]
    assert root.read_bytes(HISTORY_PLOT).startswith(b"\x89PNG") and len(plot) > 10_000


def test_a_refused_promotion_refreshes_the_history_too(tmp_path: Path) -> None:
    loaded = local_output(tmp_path)
    root = open_store(loaded.config.output.uri, loaded.config.storage)
    record_run(root, "run-1", scores(0.70, 0.80, 0.55), tickets=300)
    record_run(root, "run-4", scores(0.60, 0.70, 0.50), tickets=390)
    promote(loaded, "run-1")
    with pytest.raises(PromotionRefused):
        promote(loaded, "run-4")
    with pytest.raises(PromotionRefused):
        promote(loaded, "run-4")
    written = json.loads(root.read_bytes(HISTORY_JSON))
    assert [(r["run_id"], r["promoted"]) for r in written["runs"]] == [("run-1", "current"), ("run-4", "")]


def test_a_damaged_run_is_listed_with_its_problem_not_dropped(tmp_path: Path) -> None:
    loaded = local_output(tmp_path)
    root = open_store(loaded.config.output.uri, loaded.config.storage)
    record_run(root, "run-1", scores(0.70, 0.80, 0.55), tickets=300)
    record_run(root, "run-2", scores(0.78, 0.90, 0.61), tickets=330)
    root.child("run-2").write_bytes("metrics.json", b"{not json")
    (tmp_path / "runs" / "not a run id!").mkdir()  # someone's folder: not a run, not listed
    history = refresh_history(loaded)
    assert [r.run_id for r in history.runs] == ["run-1", "run-2"]
    assert history.runs[0].problem is None and history.runs[0].metrics["average_precision"] == 0.70
    assert "metrics.json is not valid JSON" in (history.runs[1].problem or "")
    assert "run-2: cannot read" in history.table()


def _strict(data: bytes) -> Any:
    """json.loads that refuses NaN and Infinity, as strict JSON readers (JavaScript, jq --strict) do."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(data, parse_constant=refuse)


@pytest.mark.parametrize("edited", [1e308, -1e308, float("nan"), 3.5])
def test_one_hostile_run_is_listed_damaged_and_never_stops_history_or_promote(
    tmp_path: Path, edited: float
) -> None:
    loaded = local_output(tmp_path)
    root = open_store(loaded.config.output.uri, loaded.config.storage)
    record_run(root, "run-1", scores(0.70, 0.80, 0.55), tickets=300)
    record_run(root, "hostile", scores(0.70, 0.80, 0.55), tickets=300)
    metrics = {"base": scores(0.5, 0.6, 0.4), "finetuned": scores(0.70, edited, 0.55)}
    root.child("hostile").write_bytes("metrics.json", json.dumps(metrics).encode())  # NaN as Python writes it
    record_run(root, "run-2", scores(0.78, 0.90, 0.61), tickets=330)
    promote(loaded, "run-2")  # moves the pointer and refreshes the history: no exception
    promote(loaded, "run-2")  # a retry: "already promoted", still fine
    written = _strict(root.read_bytes(HISTORY_JSON))
    hostile = next(r for r in written["runs"] if r["run_id"] == "hostile")
    assert "not a finite number in [-1, 1]" in hostile["problem"] and written["promoted_run"] == "run-2"
    result = run_cli(
        "history",
        "--output",
        loaded.config.output.uri,
        *("--set", "promote.metric=average_precision"),
        timeout=120,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_the_history_plot_shows_finished_runs_and_marks_the_promoted_ones(
    three_local_runs: tuple[LoadedConfig, Store], tmp_path: Path
) -> None:
    _, root = three_local_runs
    (tmp_path / HISTORY_PLOT).write_bytes(root.read_bytes(HISTORY_PLOT))
    with Image.open(tmp_path / HISTORY_PLOT) as image:
        width, height = image.size
        pixels: Any = image.convert("RGB")
        colours = {pixels.getpixel((x, y)) for x in range(0, width, 2) for y in range(0, height, 2)}
    assert width >= 600 and height >= 400
    # matplotlib's tab:blue (the promote metric), tab:orange (recall@10), tab:green (promoted markers)
    assert {(31, 119, 180), (255, 127, 14), (44, 160, 44)} <= colours
