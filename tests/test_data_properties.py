"""Properties of the loaders (job/data/records.py) over generated inputs.

- Valid records round-trip: written as JSON Lines, a JSON array or CSV, they load back as
  the same tickets, links and pairs.
- Any bytes (random, or a valid file with bytes flipped, cut or inserted) and any JSON values
  in any field end in a Corpus or an InputError, never another exception, and every row read
  is either kept, dropped as a duplicate, or reported with its line.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from job.config import RELATIONS, DataConfig
from job.data.records import Corpus, build_corpus, parse_links, parse_pairs, parse_tickets, require_enough
from job.errors import InputError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text a ticket may hold: any Unicode but surrogates (not encodable) and NUL (refused on purpose).
TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)
ID = TEXT.map(str.strip).filter(bool)
OPTIONAL = st.one_of(st.none(), TEXT.filter(lambda s: s != ""))
DATES = st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())


@st.composite
def ticket_records(draw: st.DrawFn, min_size: int = 1, max_size: int = 12) -> list[dict[str, Any]]:
    ids = draw(st.lists(ID, min_size=min_size, max_size=max_size, unique=True))
    records = []
    for tid in ids:
        title, description = draw(TEXT), draw(TEXT)
        if not (title.strip() or description.strip()):
            title = "t"
        records.append(
            {
                "id": tid,
                "title": title,
                "description": description,
                "category": draw(OPTIONAL),
                "project": draw(OPTIONAL),
                "created": draw(st.one_of(st.none(), DATES)),
            }
        )
    return records


def as_jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def as_csv(records: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in records])
    return out.getvalue().encode("utf-8")


def expected_text(record: dict[str, Any]) -> str:
    return f"{record['title'].strip()}\n{record['description'].strip()}".strip()


@SETTINGS
@given(ticket_records(), st.sampled_from(["jsonl", "json", "csv"]))
def test_valid_tickets_round_trip_in_every_format(records: list[dict[str, Any]], fmt: str) -> None:
    data = {"jsonl": as_jsonl, "json": lambda r: json.dumps(r).encode(), "csv": as_csv}[fmt](records)
    tickets, report = parse_tickets(data, f"tickets.{fmt}", DataConfig())
    assert report.problems == [] and report.rows == report.kept == len(records)
    assert list(tickets) == [r["id"] for r in records]  # file order kept
    for record in records:
        ticket = tickets[record["id"]]
        assert ticket.text == expected_text(record)
        assert (ticket.category, ticket.project, ticket.created) == (
            record["category"],
            record["project"],
            record["created"],
        )


@SETTINGS
@given(ticket_records(min_size=2, max_size=8), st.data())
def test_valid_links_round_trip(records: list[dict[str, Any]], data: st.DataObject) -> None:
    ids = [r["id"] for r in records]
    tickets, _ = parse_tickets(as_jsonl(records), "tickets.jsonl", DataConfig())
    rows = data.draw(
        st.lists(
            st.tuples(st.sampled_from(ids), st.sampled_from(ids), st.sampled_from(RELATIONS)).filter(
                lambda t: t[0] != t[1]
            ),
            min_size=1,
            max_size=20,
        )
    )
    links = [{"source": s, "target": t, "relation": r} for s, t, r in rows]
    parsed, report = parse_links(as_jsonl(links), "links.jsonl", DataConfig(), tickets)
    assert report.problems == []
    # Duplicates (and the reverse of an undirected link) are dropped and counted, nothing else.
    unique = set()
    for s, t, r in rows:
        unique.add((r, s, t) if r in ("causes", "blocks", "depends") else (r, *sorted((s, t))))
    assert len(parsed) == len(unique) and report.duplicates_dropped == len(rows) - len(unique)
    assert {(k.source, k.target, k.relation) for k in parsed} <= {tuple(row) for row in rows}


@SETTINGS
@given(
    st.lists(st.tuples(ID, ID, st.floats(0, 1)).filter(lambda p: p[0] != p[1]), min_size=1, max_size=15),
    st.sampled_from(["jsonl", "csv"]),
)
def test_valid_pairs_round_trip(rows: list[tuple[str, str, float]], fmt: str) -> None:
    records = [{"text_a": a, "text_b": b, "score": s} for a, b, s in rows]
    data = as_jsonl(records) if fmt == "jsonl" else as_csv(records)
    texts: dict[str, Any] = {}
    pairs, report = parse_pairs(data, f"pairs.{fmt}", DataConfig(pairs=f"pairs.{fmt}"), texts)
    assert report.problems == [] and len(pairs) == len(rows)
    for pair, (a, b, score) in zip(pairs, rows, strict=True):
        assert (texts[pair.a].text, texts[pair.b].text, pair.score) == (a, b, score)


# ---------------------------------------------------------------- anything else


def _load(inputs: dict[str, tuple[str, bytes]], on_error: str) -> Corpus | InputError:
    """build_corpus + require_enough: a Corpus whose counts add up, or an InputError (the only allowed
    failure) that names only the given files; any other exception fails the test."""
    cfg = DataConfig(on_error=on_error)  # type: ignore[arg-type]
    try:
        corpus = build_corpus(inputs, cfg)
        require_enough(corpus)
    except InputError as exc:
        assert str(exc)  # says something
        for problem in exc.problems:
            assert problem.file in {uri for uri, _ in inputs.values()}
        return exc
    for report in corpus.reports:
        assert report.rows == report.kept + report.duplicates_dropped + report.skipped
        assert report.skipped == len(report.problems)  # every row not kept is reported, once
        assert all(p.location for p in report.problems)  # with its line or item
    return corpus


VALID_TICKETS = as_jsonl([{"id": f"T-{i}", "title": f"title {i}", "description": "d"} for i in range(6)])
VALID_LINKS = as_jsonl(
    [
        {"source": "T-0", "target": "T-1", "relation": "relates"},
        {"source": "T-2", "target": "T-3", "relation": "duplicate"},
    ]
)
VALID_RECORDS = [json.loads(line) for line in VALID_TICKETS.splitlines()]
VALID_LINK_RECORDS = [json.loads(line) for line in VALID_LINKS.splitlines()]
VALID_ARRAYS = (json.dumps(VALID_RECORDS).encode(), json.dumps(VALID_LINK_RECORDS).encode())
VALID_CSV = as_csv([{"id": f"T-{i}", "title": f'a, "quoted"\ntitle {i}'} for i in range(5)])


def _whole_when_intact(result: Corpus | InputError, intact: bool) -> None:
    """Intact inputs load in full: a loader refusing everything must not pass for a careful one."""
    if intact:
        assert isinstance(result, Corpus), f"valid inputs refused: {result}"
        assert len(result.tickets) == 6 and len(result.links) == 2


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """A valid file after a few flipped, cut or inserted bytes: what a bad transfer or export does."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if action == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 20))]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "truncate":
            del data[at:]
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["jsonl", "json", "csv"]),
    st.binary(max_size=300),
    st.binary(max_size=300),
    st.sampled_from(["fail", "skip"]),
)
@example("jsonl", VALID_TICKETS, VALID_LINKS, "fail")
@example("json", *VALID_ARRAYS, "skip")
def test_random_bytes_end_in_a_corpus_or_an_input_error(
    fmt: str, tickets: bytes, links: bytes, on_error: str
) -> None:
    result = _load({"tickets": (f"t.{fmt}", tickets), "links": (f"l.{fmt}", links)}, on_error)
    _whole_when_intact(result, (tickets, links) in ((VALID_TICKETS, VALID_LINKS), VALID_ARRAYS))


@settings(max_examples=300, deadline=None)
@given(mutated(VALID_TICKETS), mutated(VALID_LINKS), st.sampled_from(["fail", "skip"]))
@example(VALID_TICKETS, VALID_LINKS, "fail")
def test_damaged_files_end_in_a_corpus_or_an_input_error(tickets: bytes, links: bytes, on_error: str) -> None:
    result = _load({"tickets": ("t.jsonl", tickets), "links": ("l.jsonl", links)}, on_error)
    _whole_when_intact(result, (tickets, links) == (VALID_TICKETS, VALID_LINKS))


@settings(max_examples=150, deadline=None)
@given(mutated(VALID_CSV), st.sampled_from(["fail", "skip"]))
@example(VALID_CSV, "fail")
def test_damaged_csv_ends_in_a_corpus_or_an_input_error(tickets: bytes, on_error: str) -> None:
    result = _load({"tickets": ("t.csv", tickets), "links": ("l.jsonl", VALID_LINKS)}, on_error)
    if tickets == VALID_CSV:
        assert isinstance(result, Corpus) and len(result.tickets) == 5, f"valid CSV refused: {result}"
        assert result.tickets["T-0"].text.startswith('a, "quoted"')


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
FIELDS = [
    "id",
    "title",
    "description",
    "category",
    "project",
    "created",
    "source",
    "target",
    "relation",
    "text_a",
    "text_b",
    "score",
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES), min_size=1, max_size=6),
    st.lists(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES), min_size=1, max_size=6),
    st.booleans(),
    st.sampled_from(["fail", "skip"]),
)
@example(VALID_RECORDS, VALID_LINK_RECORDS, False, "fail")
def test_any_json_value_in_any_field_is_checked(
    tickets: list[dict[str, Any]], second: list[dict[str, Any]], pairs_mode: bool, on_error: str
) -> None:
    first = json.dumps(tickets).encode()
    if pairs_mode:
        _load(
            {"pairs": ("p.json", first), "relationship_pairs": ("r.json", json.dumps(second).encode())},
            on_error,
        )
    else:
        result = _load(
            {"tickets": ("t.json", first), "links": ("l.json", json.dumps(second).encode())}, on_error
        )
        _whole_when_intact(result, (tickets, second) == (VALID_RECORDS, VALID_LINK_RECORDS))
