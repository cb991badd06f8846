"""The run directory's rules: which steps a step needs, what a redone step invalidates, and a
manifest that is never written over a file that is not what its step recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from job.errors import RunStateError
from job.runs.artifacts import RunDir, StepTimer, check_run_id
from job.runs.fingerprint import Fingerprint
from job.runs.steps import (
    CLASSIFY,
    EVALUATE,
    INDEX,
    PREPARE,
    STEPS,
    TRAIN,
    dependents,
    prerequisites,
    required_steps,
)
from job.storage import LocalStore

PRINT = Fingerprint("c" * 64, {"data.tickets": "t" * 64})


def _recorded(run: RunDir, *steps: str) -> None:
    for step in steps:
        written = run.store.write_bytes(f"{step}/out.txt", f"{step} output".encode())
        run.record_step(StepTimer(step, PRINT).record([written], {}))


def test_steps_are_ordered_and_know_what_they_build_on() -> None:
    assert [s.name for s in STEPS] == ["prepare", "train", "index", "evaluate", "classify"]
    assert prerequisites(CLASSIFY) == (PREPARE, TRAIN, INDEX) and prerequisites(PREPARE) == ()
    assert dependents(PREPARE) == (TRAIN, INDEX, EVALUATE, CLASSIFY) and dependents(EVALUATE) == ()
    assert dependents(INDEX) == (EVALUATE, CLASSIFY)
    assert required_steps(classify_enabled=False) == (PREPARE, TRAIN, INDEX, EVALUATE)


def test_a_step_needs_every_step_before_it_made_with_the_same_config(tmp_path: Path) -> None:
    run = RunDir(LocalStore(tmp_path / "r"), "r")
    with pytest.raises(RunStateError, match="step 'evaluate' of run r needs step 'prepare' first"):
        run.begin_step(EVALUATE, force=False, config_sha256=PRINT.config_sha256)
    _recorded(run, "prepare", "train", "index")
    run.begin_step(EVALUATE, force=False, config_sha256=PRINT.config_sha256)
    with pytest.raises(RunStateError, match="step 'prepare' was made with another config"):
        run.begin_step(EVALUATE, force=False, config_sha256="d" * 64)
    run.begin_step(EVALUATE, force=True, config_sha256="d" * 64)  # told to: uses them anyway


def test_redoing_a_step_drops_its_record_and_those_built_on_it(tmp_path: Path) -> None:
    run = RunDir(LocalStore(tmp_path / "r"), "r")
    _recorded(run, "prepare", "train", "index", "evaluate", "classify")
    run.begin_step(EVALUATE, force=False, config_sha256=PRINT.config_sha256)
    assert [s.name for s in STEPS if run.step_record(s.name)] == ["prepare", "train", "index", "classify"]
    run.begin_step(TRAIN, force=False, config_sha256=PRINT.config_sha256)
    assert [s.name for s in STEPS if run.step_record(s.name)] == ["prepare"]


def test_a_file_changed_after_its_step_recorded_it_stops_the_manifest(tmp_path: Path) -> None:
    run = RunDir(LocalStore(tmp_path / "r"), "r")
    _recorded(run, "prepare", "train", "index")
    run.write_json("evaluate/metrics.json", {"finetuned": {}})
    _recorded(run, "evaluate")
    (tmp_path / "r" / "train" / "out.txt").write_text("cut")
    with pytest.raises(
        RunStateError, match=r"train/out\.txt is missing or has the wrong size \(3 bytes, expected 12\)"
    ):
        run.finish_if_complete(required_steps(classify_enabled=False), {})
    assert not run.is_finished()
    (tmp_path / "r" / "train" / "out.txt").write_text("train output")
    assert run.finish_if_complete(required_steps(classify_enabled=False), {}) and run.is_finished()


@pytest.mark.parametrize(
    "run_id", ["promoted.json", "history.json", "history.png", "HISTORY.PNG", "pointer.json"]
)
def test_names_of_the_files_beside_the_runs_are_no_run_ids(run_id: str) -> None:
    with pytest.raises(RunStateError, match="kept for the files beside the runs"):
        check_run_id(run_id)
    assert check_run_id("weekly-2026.12.03") == "weekly-2026.12.03"


def test_a_reserved_run_id_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    result = run_cli(
        "prepare",
        "--run-id",
        "history.json",
        "--output",
        str(tmp_path / "runs"),
        "--set",
        f"data.tickets={tmp_path / 'in' / 't.jsonl'}",
    )
    assert result.returncode == 2 and "kept for the files beside the runs" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_sigterm_stops_any_command_with_exit_75() -> None:
    import os
    import signal
    import time

    from job.cli import _execute

    def evicted() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this

    with pytest.raises(SystemExit) as stopped:
        _execute("promote", evicted)
    assert stopped.value.code == 75
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
