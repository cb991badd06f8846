"""Phases of a step (job/profile.py): each counts its own time only, and the table accounts for the rest."""

from __future__ import annotations

import pytest

from job import profile
from job.runs.records import StepRecord


class Clock:
    """time.monotonic, advanced by hand: phase lengths are exact, whatever else the machine runs."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(profile.time, "monotonic", fake)
    return fake


def test_a_nested_phase_pauses_the_outer_one_and_repeats_are_counted(clock: Clock) -> None:
    phases = profile.start_step()
    with profile.phase("export"):
        clock.now += 2.0
        with profile.phase("encode"):
            clock.now += 5.0
        clock.now += 1.0
    with profile.phase("encode"):
        clock.now += 3.0
    assert phases.rounded() == {"encode": 8.0, "export": 3.0}
    assert phases.counts() == {"encode": 2, "export": 1}


def test_phases_go_to_the_step_running_now(clock: Clock) -> None:
    first = profile.start_step()
    with profile.phase("load"):
        clock.now += 1.0
    second = profile.start_step()
    with profile.phase("load"):
        clock.now += 4.0
    assert first.rounded() == {"load": 1.0} and second.rounded() == {"load": 4.0}


def test_the_table_shows_each_phase_and_what_the_phases_leave_as_other() -> None:
    records = {
        "evaluate": StepRecord(
            "evaluate",
            "",
            "",
            10.0,
            phases_s={"encode": 6.0, "load": 1.5},
            phase_counts={"encode": 3, "load": 1},
        ),
        "classify": StepRecord("classify", "", "", 2.0),
    }
    lines = profile.table(records).splitlines()
    assert lines[0].split() == [
        "evaluate",
        "10.0",
        "s",
        "encode",
        "6.0",
        "(x3)",
        "load",
        "1.5",
        "other",
        "2.5",
    ]
    assert lines[1].split() == ["classify", "2.0", "s", "other", "2.0"]
