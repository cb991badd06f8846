"""job/data/records.py: formats, field checks, the error policy, and what the messages say.

The corpus in tests/bad_inputs covers the odd inputs end to end through the CLI; these pin
the loaders' own rules: line numbers, what counts as a row, which problems are whole-file,
what skipping keeps, and that parsing leaves no global state behind.
"""

from __future__ import annotations

import csv
import json
import re
from typing import Any

import pytest

from job.config import DataConfig
from job.data.records import (
    Ticket,
    build_corpus,
    detect_format,
    iter_records,
    parse_links,
    parse_pairs,
    parse_tickets,
    require_enough,
    text_id,
)
from job.errors import InputError, Problem


def jsonl(*rows: Any) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def t(i: int, **fields: Any) -> dict[str, Any]:
    return {"id": f"T-{i}", "title": f"title {i}", "description": f"description {i}", **fields}


TICKETS = jsonl(*(t(i) for i in range(1, 9)))
LINKS = jsonl(
    *({"source": f"T-{i}", "target": f"T-{i + 1}", "relation": "duplicate"} for i in range(1, 8, 2))
)


@pytest.mark.parametrize(
    ("name", "declared", "expected"),
    [
        ("t.jsonl", "auto", "jsonl"),
        ("t.NDJSON", "auto", "jsonl"),
        ("t.json", "auto", "json"),
        ("T.CSV", "auto", "csv"),
        ("t.txt", "csv", "csv"),
        ("t.jsonl", "json", "json"),
    ],
)
def test_detect_format(name: str, declared: str, expected: str) -> None:
    assert detect_format(name, declared) == expected


def test_unknown_extension_asks_for_data_format() -> None:
    with pytest.raises(InputError, match="set data.format"):
        detect_format("tickets.txt", "auto")


def test_line_numbers_count_blank_lines_and_crlf() -> None:
    data = b'\xef\xbb\xbf{"id": "a"}\r\n\r\n   \n{"id": "b"}\r\n{"id":\n'
    records = list(iter_records(data, "f.jsonl", "jsonl"))
    assert [where for where, _ in records] == ["line 1", "line 4", "line 5"]
    assert records[0][1] == {"id": "a"} and records[1][1] == {"id": "b"}
    problem = records[2][1]
    assert isinstance(problem, Problem) and problem.location == "line 5" and "invalid JSON" in problem.message


def test_a_last_line_without_newline_is_read() -> None:
    assert [r for _, r in iter_records(b'{"id": "a"}\n{"id": "b"}', "f.jsonl", "jsonl")] == [
        {"id": "a"},
        {"id": "b"},
    ]


def test_whole_file_problems_have_no_row() -> None:
    for data, fmt in (
        (b"", "jsonl"),
        (b"[1, 2]", "jsonl"),
        (b"{}", "json"),
        (b"id,title\n", "csv"),
        (b"\xff\xfe{\x00}\x00", "jsonl"),
        (b'[{"id": "a"}', "json"),
    ):
        records = list(iter_records(data, "f", fmt))  # type: ignore[arg-type]
        assert records and all(where == "" and isinstance(item, Problem) for where, item in records), (
            data,
            records,
        )


def test_tickets_text_fields_and_ids() -> None:
    data = jsonl(
        {
            "id": 7,
            "title": "  Disk full ",
            "description": "",
            "category": "",
            "project": "HDFS",
            "created": "2019-01-02T03:04:05Z",
        },
        t(8, title="", description="only a description"),
    )
    tickets, report = parse_tickets(data, "t.jsonl", DataConfig())
    assert report.problems == [] and report.rows == report.kept == 2
    assert tickets["7"] == Ticket("7", "Disk full", None, "HDFS", "2019-01-02T03:04:05Z")
    assert tickets["T-8"].text == "only a description"


def test_text_template_may_use_every_field() -> None:
    cfg = DataConfig(text_template="[{project}/{category}] {id}: {title} | {description}")
    tickets, _ = parse_tickets(jsonl(t(1, project="YARN", category="scheduler")), "t.jsonl", cfg)
    assert tickets["T-1"].text == "[YARN/scheduler] T-1: title 1 | description 1"


def test_duplicate_id_names_both_lines_and_keeps_the_first() -> None:
    tickets, report = parse_tickets(jsonl(t(1), t(2), t(1, title="second copy")), "t.jsonl", DataConfig())
    assert tickets["T-1"].text.startswith("title 1")
    assert [str(p) for p in report.problems] == [
        "t.jsonl line 3: field 'id': duplicate id 'T-1' (first at line 1): expected each id once"
    ]
    assert (report.rows, report.kept, report.skipped) == (3, 2, 1)


@pytest.mark.parametrize(
    ("record", "field", "says"),
    [
        ({"title": "x"}, "id", "is missing"),
        ({"id": None, "title": "x"}, "id", "is missing"),
        ({"id": "", "title": "x"}, "id", "is empty"),
        ({"id": ["a"], "title": "x"}, "id", "got array"),
        ({"id": 1.5, "title": "x"}, "id", "got number"),
        ({"id": "a", "title": {"x": 1}}, "title", "got object"),
        ({"id": "a", "title": "", "description": " "}, "title", "both empty"),
        ({"id": "a", "title": "x", "project": 3}, "project", "expected a string or null"),
        ({"id": "a", "title": "x", "created": "2019-13-45"}, "created", "ISO-8601"),
        ({"id": "a", "title": "bad \ud800 surrogate"}, "title", "unpaired surrogate"),
        ({"id": "a", "title": "nul \x00 char"}, "title", "NUL"),
    ],
)
def test_bad_ticket_fields_name_the_field(record: dict[str, Any], field: str, says: str) -> None:
    _, report = parse_tickets(jsonl(record), "t.jsonl", DataConfig())
    assert len(report.problems) == 1
    problem = report.problems[0]
    assert (problem.file, problem.location, problem.field) == ("t.jsonl", "line 1", field)
    assert says in problem.message and "expected" in problem.message


def test_non_utf8_byte_is_blamed_on_its_field() -> None:
    data = b'{"id": "a", "title": "caf\xe9"}\n{"id": "b", "title": "ok", "extra": "\xff"}\n'
    tickets, report = parse_tickets(data, "t.jsonl", DataConfig())
    assert [(p.location, p.field) for p in report.problems] == [("line 1", "title")]
    assert "0xe9" in report.problems[0].message
    assert list(tickets) == ["b"]  # a bad byte in a field the job does not use costs nothing


def test_links_relations_direction_and_duplicates() -> None:
    tickets, _ = parse_tickets(TICKETS, "t.jsonl", DataConfig())
    data = jsonl(
        {"source": "T-1", "target": "T-2", "relation": "Duplicate"},
        {"source": "T-2", "target": "T-1", "relation": "duplicate"},  # undirected: the same link
        {"source": "T-3", "target": "T-4", "relation": "causes"},
        {"source": "T-4", "target": "T-3", "relation": "causes"},  # directed: a different link
        {"source": "T-3", "target": "T-4", "relation": "causes"},
        {"source": "T-1", "target": "T-3", "relation": "clones"},
        {"source": "T-3", "target": "T-1", "relation": "clones"},
    )  # a clone: undirected, one link
    links, report = parse_links(data, "l.jsonl", DataConfig(), tickets)
    assert [(k.source, k.target, k.relation) for k in links] == [
        ("T-1", "T-2", "duplicate"),
        ("T-3", "T-4", "causes"),
        ("T-4", "T-3", "causes"),
        ("T-1", "T-3", "clones"),
    ]
    assert report.duplicates_dropped == 3 and report.problems == [] and report.skipped == 0


def test_relation_direction_is_defined_once() -> None:
    """Every relation is either directed or unordered, never both, never neither, so data.py (which link is
    a repeat) and the cross-encoder (which order to train) cannot disagree."""
    from job.config import DIRECTED_RELATIONS, RELATIONS, UNORDERED_RELATIONS

    assert sorted(DIRECTED_RELATIONS + UNORDERED_RELATIONS) == sorted(RELATIONS)
    assert set(UNORDERED_RELATIONS) == {"duplicate", "relates", "clones"}


def test_relations_can_be_restricted() -> None:
    tickets, _ = parse_tickets(TICKETS, "t.jsonl", DataConfig())
    _, report = parse_links(
        jsonl({"source": "T-1", "target": "T-2", "relation": "causes"}),
        "l.jsonl",
        DataConfig(relations=["duplicate"]),
        tickets,
    )
    assert "unknown relation 'causes': expected one of duplicate" in str(report.problems[0])


@pytest.mark.parametrize(
    ("score", "says"),
    [
        (1.0000001, "got 1.0000001"),
        (-0.0001, "got -0.0001"),
        ("0.5", "got string"),
        (True, "got boolean"),
        (None, "is missing"),
        ([0.5], "got array"),
    ],
)
def test_pair_scores_must_be_numbers_in_0_1(score: Any, says: str) -> None:
    row = {"text_a": "a", "text_b": "b", "score": score}
    _, report = parse_pairs(jsonl(row), "p.jsonl", DataConfig(pairs="p.jsonl"), {})
    assert report.problems[0].field == "score" and says in report.problems[0].message


def test_pair_scores_at_the_bounds_and_from_csv() -> None:
    texts: dict[str, Ticket] = {}
    data = b"text_a,text_b,score\na,b,0\nc,d,1\ne,f,0.25\ng,h,nan\ni,j,inf\n"
    pairs, report = parse_pairs(data, "p.csv", DataConfig(pairs="p.csv"), texts)
    assert [p.score for p in pairs] == [0.0, 1.0, 0.25]
    assert [(p.location, p.field) for p in report.problems] == [("line 5", "score"), ("line 6", "score")]


def test_pairs_share_nodes_by_text_and_bad_rows_add_none() -> None:
    texts: dict[str, Ticket] = {}
    data = jsonl(
        {"text_a": "disk full", "text_b": "no space", "score": 1},
        {"text_a": "disk full", "text_b": "slow disk", "score": 0.2},
        {"text_a": "orphan", "text_b": "orphan", "score": 1},
        {"text_a": "also orphan", "text_b": "x", "score": 7},
    )
    pairs, report = parse_pairs(data, "p.jsonl", DataConfig(pairs="p.jsonl"), texts)
    assert pairs[0].a == pairs[1].a == text_id("disk full")
    assert sorted(t.text for t in texts.values()) == ["disk full", "no space", "slow disk"]
    assert len(report.problems) == 2


# ---------------------------------------------------------------- CSV


def csv_data(header: str, *rows: str) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def test_csv_header_must_have_the_columns_and_says_so() -> None:
    with pytest.raises(InputError) as raised:
        build_corpus({"tickets": ("t.csv", csv_data("id\ttitle", "T-1\tx"))}, DataConfig())
    assert "no column id, title or description" in str(raised.value) and "a tab as the delimiter" in str(
        raised.value
    )


def test_csv_quoting_error_fails_the_whole_file_even_when_skipping() -> None:
    data = csv_data("id,title", "T-1,ok", 'T-2,"broken"quote', "T-3,never read")
    with pytest.raises(InputError, match="broken CSV quoting") as raised:
        build_corpus({"tickets": ("t.csv", data)}, DataConfig(on_error="skip"))
    assert raised.value.problems[0].location == "line 3"


def test_csv_multiline_cells_big_cells_and_the_field_limit_is_restored() -> None:
    limit = csv.field_size_limit()
    big = "x" * 500_000
    data = csv_data("id,title,description", 'T-1,"two\nlines",short', f"T-2,big,{big}")
    tickets, report = parse_tickets(data, "t.csv", DataConfig())
    assert report.problems == [] and tickets["T-2"].text.endswith(big)
    assert tickets["T-1"].text.startswith("two\nlines")
    assert csv.field_size_limit() == limit  # no process-wide change left behind


# ---------------------------------------------------------------- the policy


def test_fail_policy_lists_every_problem() -> None:
    bad = jsonl(*(t(i) for i in range(1, 5)), *({"id": f"X-{i}", "title": 1} for i in range(60)))
    with pytest.raises(InputError) as raised:
        build_corpus({"tickets": ("t.jsonl", bad), "links": ("l.jsonl", LINKS)}, DataConfig())
    message = str(raised.value)
    assert (
        len(raised.value.problems) == 62
    )  # 60 bad tickets, and the 2 links to T-5..T-8, which are not there
    assert "t.jsonl line 5: field 'title'" in message and "... and 12 more" in message
    assert "set data.on_error: skip" in message


def test_skip_policy_keeps_the_good_rows_and_counts_the_rest() -> None:
    tickets = jsonl(t(1), b'{"id": "cut', t(2), t(3, created="never"), t(4))
    links = jsonl(
        {"source": "T-1", "target": "T-2", "relation": "relates"},
        {"source": "T-3", "target": "T-4", "relation": "relates"},
    )
    corpus = build_corpus(
        {"tickets": ("t.jsonl", tickets), "links": ("l.jsonl", links)}, DataConfig(on_error="skip")
    )
    assert sorted(corpus.tickets) == ["T-1", "T-2", "T-4"]
    assert [(k.source, k.target) for k in corpus.links] == [("T-1", "T-2")]
    assert [(r.rows, r.kept, r.skipped) for r in corpus.reports] == [(5, 3, 2), (2, 1, 1)]
    assert "its ticket row at line 4 was rejected" in str(corpus.problems[-1])
    require_enough(corpus)


def test_whole_file_problems_fail_under_skip_too() -> None:
    with pytest.raises(InputError, match="cannot skip them"):
        build_corpus(
            {"tickets": ("t.jsonl", TICKETS), "links": ("l.jsonl", b"")}, DataConfig(on_error="skip")
        )


@pytest.mark.parametrize(
    ("tickets", "links", "says"),
    [
        (jsonl(t(1)), None, "only 1 usable ticket(s) left"),
        (TICKETS, None, "no usable links"),
        (
            TICKETS,
            jsonl({"source": "T-1", "target": "T-99", "relation": "relates"}),
            "no usable links (1 bad row(s)",
        ),
    ],
)
def test_require_enough_says_what_is_missing(tickets: bytes, links: bytes | None, says: str) -> None:
    inputs = {"tickets": ("t.jsonl", tickets)}
    if links is not None:
        inputs["links"] = ("l.jsonl", links)
    corpus = build_corpus(inputs, DataConfig(on_error="skip"))
    with pytest.raises(InputError, match=re.escape(says)):
        require_enough(corpus)


def test_no_input_configured() -> None:
    with pytest.raises(InputError, match="no input configured"):
        build_corpus({}, DataConfig())
