"""job/fleet/drift.py on inputs that differ in known ways, and prepare's drift check against the promoted run.

The pure measures are checked on small rows built here, where every expected number can be worked out
by hand. The pipeline test runs the real prepare step twice on the shared sample (once without YARN,
then all of it) with the first run promoted, and reads the drift section and the warnings it logged.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import structlog

from job import pipeline
from job.config import DriftConfig, load_config
from job.fleet.drift import compare, length_shift, profile_inputs, relation_shift
from job.fleet.promote import Candidate, new_pointer
from job.jsonio import to_json
from job.log import configure_logging
from job.runs import context
from job.storage import open_store


def tickets(prefix: str, count: int, project: str, length: int, test: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}-{i}",
            "text": "x" * length,
            "project": project,
            "split": "test" if i < test else "train",
        }
        for i in range(count)
    ]


def links(counts: dict[str, int]) -> list[dict[str, Any]]:
    return [
        {"source": "a", "target": "b", "relation": relation}
        for relation, n in counts.items()
        for _ in range(n)
    ]


PROMOTED = profile_inputs(tickets("OLD", 100, "CORE", 150), links({"duplicate": 40}))


def test_each_measure_on_inputs_that_differ_in_known_ways() -> None:
    # 60 more tickets: 40 in CORE (twice as long) and 20 in a new project; 10 test tickets, 6 of them new.
    current_tickets = (
        tickets("OLD", 100, "CORE", 150, test=4)
        + tickets("NEW", 40, "CORE", 300, test=6)
        + tickets("WEB", 20, "WEB", 150)
    )
    current = profile_inputs(current_tickets, links({"duplicate": 20, "relates": 20}))
    drift = compare(current, PROMOTED, "run-a", DriftConfig())
    assert drift["against_run"] == "run-a"
    assert drift["tickets"] == {"current": 160, "promoted": 100, "change": 0.6}
    assert drift["links"] == {"current": 40, "promoted": 40, "change": 0.0}
    assert drift["relation_mix"]["current"] == {"duplicate": 0.5, "relates": 0.5}
    assert drift["relation_mix"]["shift"] == 0.5  # half the links would have to change relation
    assert drift["projects"] == {"new": ["WEB"], "gone": []}
    assert drift["new_test_tickets_share"] == 0.6
    assert drift["text_length"]["promoted"]["p50"] == 150 and drift["text_length"]["current"]["p90"] == 300
    assert drift["text_length"]["shift"] == 0.25  # the 40 tickets of 300 characters moved to the next bin
    warned = {w["measure"]: (w["value"], w["bound"]) for w in drift["warnings"]}
    assert warned == {
        "tickets": (0.6, 0.5),
        "relation_mix": (0.5, 0.15),
        "text_length": (0.25, 0.15),
        "new_test_tickets_share": (0.6, 0.5),
        "new_projects": (1, 0),
    }


def test_nothing_is_flagged_within_the_bounds() -> None:
    same = compare(PROMOTED, PROMOTED, "run-a", DriftConfig())
    assert same["warnings"] == [] and same["relation_mix"]["shift"] == 0 and same["text_length"]["shift"] == 0
    # A bound is a maximum: exactly at it is not past it.
    grown = profile_inputs(tickets("OLD", 150, "CORE", 150), links({"duplicate": 40}))
    assert compare(grown, PROMOTED, "run-a", DriftConfig(max_count_change=0.5))["warnings"] == []
    assert [
        w["measure"]
        for w in compare(grown, PROMOTED, "run-a", DriftConfig(max_count_change=0.49))["warnings"]
    ] == ["tickets"]
    quiet = DriftConfig(
        warn_on_new_projects=False,
        max_relation_shift=1,
        max_length_shift=1,
        max_new_test_share=1,
        max_count_change=10,
    )
    assert (
        compare(
            profile_inputs(tickets("N", 5, "WEB", 5000, test=5), links({"blocks": 1})),
            PROMOTED,
            "run-a",
            quiet,
        )["warnings"]
        == []
    )


def test_measures_of_empty_sides_are_defined() -> None:
    empty = profile_inputs([], [])
    assert relation_shift({}, {"duplicate": 3}) == 0.5 and length_shift((), (10,)) == 0.0
    drift = compare(empty, empty, "run-a", DriftConfig())
    assert (
        drift["tickets"]["change"] is None
        and drift["new_test_tickets_share"] is None
        and drift["warnings"] == []
    )


# ---------------------------------------------------------------- in the prepare step


def jsonl_without_project(source: Path, target: Path, project: str) -> Path:
    """The shared sample without one project's tickets (and the links that touch them)."""
    target.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (source / "tickets.jsonl").read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r["project"] != project]
    ids = {r["id"] for r in kept}
    link_rows = [
        json.loads(line) for line in (source / "links.jsonl").read_text().splitlines() if line.strip()
    ]
    (target / "tickets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (target / "links.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in link_rows if r["source"] in ids and r["target"] in ids)
    )
    return target


def prepare_run(
    inputs: Path, output: Path, run_id: str, **settings: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The real prepare step in this process; its record's info and the log lines it wrote."""
    overrides = {
        "data.tickets": str(inputs / "tickets.jsonl"),
        "data.links": str(inputs / "links.jsonl"),
        "output.uri": str(output),
        "pairs.mine_hard_negatives": False,
        **settings,
    }
    ctx = context.open_run(load_config(environ={}, cli_overrides=overrides), run_id)
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    with context.exclusive(ctx, "prepare"):
        pipeline.run_step(ctx, "prepare")
    record = ctx.run.step_record("prepare")
    assert record is not None
    return record.info, [json.loads(line) for line in stream.getvalue().splitlines()]


def test_prepare_records_drift_against_the_promoted_run_and_warns_past_a_bound(
    tmp_path: Path, shared_sample: Path
) -> None:
    output = tmp_path / "runs"
    without_yarn = jsonl_without_project(shared_sample, tmp_path / "without-yarn", "YARN")
    first, first_log = prepare_run(without_yarn, output, "run-1")
    assert first["drift"] == {"against_run": None, "skipped": "no promoted run"}
    assert not [line for line in first_log if line["event"] == "input drift past bound"]
    root = open_store(str(output), load_config(environ={}).config.storage)
    root.write_bytes(
        "promoted.json",
        to_json(new_pointer(Candidate("run-1", root.where("run-1"), 0.5), "average_precision", 0.0, None)),
    )

    second, log = prepare_run(shared_sample, output, "run-2", **{"drift.max_count_change": 0.1})
    drift = second["drift"]
    sample_tickets = len((shared_sample / "tickets.jsonl").read_text().splitlines())
    assert drift["against_run"] == "run-1"
    assert drift["tickets"]["current"] == sample_tickets == second["inputs"]["tickets"]
    assert drift["tickets"]["promoted"] == first["inputs"]["tickets"] == sample_tickets - 55  # YARN has 55
    assert drift["projects"] == {"new": ["YARN"], "gone": []}
    assert 0 < drift["new_test_tickets_share"] <= 1
    warned = {line["measure"]: line for line in log if line["event"] == "input drift past bound"}
    assert {"tickets", "links", "new_projects"} <= set(warned), warned
    assert warned["tickets"]["level"] == "warning" and warned["tickets"]["bound"] == 0.1
    assert warned["tickets"]["against_run"] == "run-1"
    assert [w["measure"] for w in drift["warnings"]] == list(warned)

    # The same inputs again, against themselves: nothing moved, nothing to warn about.
    root.write_bytes(
        "promoted.json",
        to_json(new_pointer(Candidate("run-2", root.where("run-2"), 0.5), "average_precision", 0.0, None)),
    )
    third, log = prepare_run(shared_sample, output, "run-3")
    assert third["drift"]["warnings"] == [] and third["drift"]["tickets"]["change"] == 0.0
    assert third["drift"]["new_test_tickets_share"] == 0.0


def test_a_promoted_run_without_prepared_files_skips_drift_with_a_warning(
    tmp_path: Path, shared_sample: Path
) -> None:
    output = tmp_path / "runs"
    root = open_store(str(output), load_config(environ={}).config.storage)
    root.write_bytes(
        "promoted.json",
        to_json(
            new_pointer(Candidate("gone-run", root.where("gone-run"), 0.5), "average_precision", 0.0, None)
        ),
    )
    info, log = prepare_run(shared_sample, output, "run-1")
    assert info["drift"]["against_run"] == "gone-run" and "cannot read" in info["drift"]["skipped"]
    assert any(line["event"].startswith("no drift check") and line["level"] == "warning" for line in log)


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    yield
    structlog.reset_defaults()  # other tests expect structlog as it was


def test_edited_rows_of_the_promoted_run_count_as_invalid_and_never_stop_prepare() -> None:
    edited = profile_inputs(
        [{"id": 7, "text": ["x"], "project": 3}, "not a row", *tickets("OLD", 2, "CORE", 10)],
        [{"relation": 5}, ["x"], {"relation": "duplicate"}],
    )
    assert edited.relations == {"(invalid)": 2, "duplicate": 1}
    assert edited.projects == {"(invalid)": 1, "CORE": 2}
    drift = compare(PROMOTED, edited, "run-a", DriftConfig())  # sorts projects and relations of both sides
    assert drift["projects"] == {"new": [], "gone": ["(invalid)"]}


def test_a_promoted_run_with_an_edited_links_file_is_compared_not_fatal(
    tmp_path: Path, shared_sample: Path
) -> None:
    output = tmp_path / "runs"
    prepare_run(shared_sample, output, "run-1")
    root = open_store(str(output), load_config(environ={}).config.storage)
    (output / "run-1" / "prepared" / "links.jsonl").write_text('{"relation": 5}\n{"source": "a"}\n')
    root.write_bytes(
        "promoted.json",
        to_json(new_pointer(Candidate("run-1", root.where("run-1"), 0.5), "average_precision", 0.0, None)),
    )
    info, _ = prepare_run(shared_sample, output, "run-2")
    assert info["drift"]["against_run"] == "run-1" and info["drift"]["links"]["promoted"] == 2
