"""Read and validate tickets, links and prebuilt pairs from JSONL, JSON arrays or CSV.

Every bad row becomes a `Problem` naming file, line (or row/item), field and what was
expected. The loaders collect all problems; `load_corpus` then applies `data.on_error`:
`fail` raises one InputError listing them, `skip` drops those rows and counts them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from job.config import DataConfig
from job.errors import InputError, Problem
from job.storage import basename

Format = Literal["jsonl", "json", "csv"]


@dataclass(frozen=True)
class Ticket:
    id: str
    text: str
    category: str | None = None
    project: str | None = None
    created: str | None = None


@dataclass(frozen=True)
class Link:
    source: str
    target: str
    relation: str


@dataclass(frozen=True)
class ScoredPair:
    a: str
    b: str
    score: float


@dataclass
class FileReport:
    """What one input file held: rows read, kept, skipped (with why), and its checksum."""

    name: str
    sha256: str
    rows: int = 0
    kept: int = 0
    problems: list[Problem] = field(default_factory=list)
    duplicates_dropped: int = 0

    @property
    def skipped(self) -> int:
        return self.rows - self.kept - self.duplicates_dropped


@dataclass
class Corpus:
    """Validated inputs: tickets by id, typed links, and (pairs mode) given scored pairs."""

    tickets: dict[str, Ticket]
    links: list[Link]
    scored_pairs: list[ScoredPair] | None
    reports: list[FileReport]

    @property
    def problems(self) -> list[Problem]:
        return [p for r in self.reports for p in r.problems]


# ---------------------------------------------------------------- records


def detect_format(name: str, declared: str) -> Format:
    if declared != "auto":
        return declared  # type: ignore[return-value]
    lower = name.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith(".json"):
        return "json"
    if lower.endswith(".csv"):
        return "csv"
    raise InputError(f"{name}: cannot tell the format from the extension; set data.format to jsonl, json or csv")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def iter_records(data: bytes, name: str, fmt: Format) -> Iterator[tuple[str, dict[str, Any] | Problem]]:
    """Yield (location, record) for good rows and (location, Problem) for rows that cannot be parsed."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 BOM is harmless; Excel writes one
    if not data.strip():
        yield "", Problem(name, None, None, "file is empty: expected at least one record")
        return
    if fmt == "jsonl":
        yield from _iter_jsonl(data, name)
    elif fmt == "json":
        yield from _iter_json_array(data, name)
    else:
        yield from _iter_csv(data, name)


def _iter_jsonl(data: bytes, name: str) -> Iterator[tuple[str, dict[str, Any] | Problem]]:
    if data.lstrip()[:1] == b"[":
        yield "line 1", Problem(name, "line 1", None,
                                "this is a JSON array but the file is read as JSON Lines; set data.format: json")
        return
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"line {number}"
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        if b"\x00" in line:
            yield where, Problem(name, where, None, "contains a NUL byte")
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield where, Problem(name, where, None, f"not valid UTF-8 (byte {exc.start + 1} of the line)")
            continue
        try:
            record = json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            yield where, Problem(name, where, None, f"invalid JSON at column {exc.colno}: {exc.msg}")
            continue
        except ValueError as exc:
            yield where, Problem(name, where, None, str(exc))
            continue
        if not isinstance(record, dict):
            yield where, Problem(name, where, None, f"expected a JSON object, got {_type_name(record)}")
            continue
        yield where, record


def _decode_whole(data: bytes, name: str) -> str | Problem:
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        return Problem(name, f"line {line}", None, "contains a NUL byte")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return Problem(name, f"line {line}", None, "not valid UTF-8; the whole file must be UTF-8")


def _iter_json_array(data: bytes, name: str) -> Iterator[tuple[str, dict[str, Any] | Problem]]:
    text = _decode_whole(data, name)
    if isinstance(text, Problem):
        yield text.location or "", text
        return
    try:
        items = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        hint = " (it looks like JSON Lines; set data.format: jsonl)" if text.lstrip().startswith("{") else ""
        yield f"line {exc.lineno}", Problem(name, f"line {exc.lineno}", None, f"invalid JSON: {exc.msg}{hint}")
        return
    except ValueError as exc:
        yield "", Problem(name, None, None, str(exc))
        return
    if not isinstance(items, list):
        yield "", Problem(name, None, None, f"expected a JSON array of objects, got {_type_name(items)}")
        return
    if not items:
        yield "", Problem(name, None, None, "the array is empty: expected at least one record")
    for number, item in enumerate(items, start=1):
        where = f"item {number}"
        if isinstance(item, dict):
            yield where, item
        else:
            yield where, Problem(name, where, None, f"expected a JSON object, got {_type_name(item)}")


def _iter_csv(data: bytes, name: str) -> Iterator[tuple[str, dict[str, Any] | Problem]]:
    text = _decode_whole(data, name)
    if isinstance(text, Problem):
        yield text.location or "", text
        return
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        yield "line 1", Problem(name, "line 1", None, f"cannot read the CSV header: {exc}")
        return
    header = [h.strip() for h in header]
    rows = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            where = f"line {reader.line_num}"
            yield where, Problem(name, where, None, f"broken CSV quoting: {exc}")
            return  # the reader cannot resync after a quoting error
        rows += 1
        where = f"line {reader.line_num}"
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            yield where, Problem(name, where, None, f"row has {len(values)} fields, the header has {len(header)}")
            continue
        yield where, dict(zip(header, values, strict=True))
    if rows == 0:
        yield "", Problem(name, None, None, "the CSV has a header but no rows")


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


# ---------------------------------------------------------------- fields


class _RowError(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


def _required_str(record: dict[str, Any], key: str) -> str:
    if key not in record or record[key] is None:
        raise _RowError(key, "is missing: expected a non-empty string")
    value = record[key]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # numeric ids are lossless as text
    if not isinstance(value, str):
        raise _RowError(key, f"expected a string, got {_type_name(value)}")
    if not value.strip():
        raise _RowError(key, "is empty: expected a non-empty string")
    return value.strip()


def _optional_str(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _RowError(key, f"expected a string or null, got {_type_name(value)}")
    return value


def _score(record: dict[str, Any], key: str, from_csv: bool) -> float:
    if key not in record or record[key] in (None, ""):
        raise _RowError(key, "is missing: expected a number in [0, 1]")
    value = record[key]
    if from_csv and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _RowError(key, f"expected a number in [0, 1], got {record[key]!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _RowError(key, f"expected a number in [0, 1], got {_type_name(value)} {value!r}")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise _RowError(key, f"expected a number in [0, 1], got {value}")
    return float(value)


def _created(record: dict[str, Any]) -> str | None:
    value = _optional_str(record, "created")
    if value is None:
        return None
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _RowError("created", f"expected an ISO-8601 date-time, got {value!r}") from None
    return value


# ---------------------------------------------------------------- files


@dataclass
class _Parsed:
    report: FileReport
    rows: list[tuple[str, dict[str, Any]]]


def _parse_file(data: bytes, uri: str, cfg: DataConfig) -> _Parsed:
    name = basename(uri)
    fmt = detect_format(name, cfg.format)
    report = FileReport(name=uri, sha256=hashlib.sha256(data).hexdigest())
    rows: list[tuple[str, dict[str, Any]]] = []
    for where, item in iter_records(data, uri, fmt):
        if isinstance(item, Problem):
            if item.location:  # a row-level problem counts as a row
                report.rows += 1
            report.problems.append(item)
        else:
            report.rows += 1
            rows.append((where, item))
    return _Parsed(report, rows)


def _run_row(report: FileReport, where: str, check: Any) -> Any:
    try:
        return check()
    except _RowError as exc:
        report.problems.append(Problem(report.name, where, exc.field_name, str(exc)))
        return None


def parse_tickets(data: bytes, uri: str, cfg: DataConfig) -> tuple[dict[str, Ticket], FileReport]:
    parsed = _parse_file(data, uri, cfg)
    report = parsed.report
    tickets: dict[str, Ticket] = {}
    first_seen: dict[str, str] = {}
    csv_input = detect_format(basename(uri), cfg.format) == "csv"
    for where, record in parsed.rows:
        ticket = _run_row(report, where, lambda r=record: _ticket(r, cfg, csv_input))
        if ticket is None:
            continue
        if ticket.id in tickets:
            report.problems.append(Problem(report.name, where, "id",
                                           f"duplicate id {ticket.id!r} (first at {first_seen[ticket.id]})"))
            continue
        tickets[ticket.id], first_seen[ticket.id] = ticket, where
    report.kept = len(tickets)
    return tickets, report


def _ticket(record: dict[str, Any], cfg: DataConfig, csv_input: bool) -> Ticket:
    ticket_id = _required_str(record, "id")
    parts = {}
    for key in ("title", "description"):
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise _RowError(key, f"expected a string, got {_type_name(value)}")
        parts[key] = (value or "").strip()
    if not parts["title"] and not parts["description"]:
        raise _RowError("title", "title and description are both empty: a ticket needs text")
    category, project = _optional_str(record, "category"), _optional_str(record, "project")
    text = cfg.text_template.format(id=ticket_id, title=parts["title"], description=parts["description"],
                                    category=category or "", project=project or "").strip()
    return Ticket(ticket_id, text, category, project, _created(record))


def parse_links(data: bytes, uri: str, cfg: DataConfig, known: dict[str, Ticket]) -> tuple[list[Link], FileReport]:
    parsed = _parse_file(data, uri, cfg)
    report, links, seen = parsed.report, [], set()
    for where, record in parsed.rows:
        link = _run_row(report, where, lambda r=record: _link(r, cfg, known))
        if link is None:
            continue
        undirected = link.relation in ("relates", "duplicate")
        key = (link.relation, *sorted((link.source, link.target))) if undirected else (link.relation, link.source, link.target)
        if key in seen:
            report.duplicates_dropped += 1  # the same link twice (or both directions of an undirected one)
            continue
        seen.add(key)
        links.append(link)
    report.kept = len(links)
    return links, report


def _link(record: dict[str, Any], cfg: DataConfig, known: dict[str, Ticket]) -> Link:
    source, target = _required_str(record, "source"), _required_str(record, "target")
    relation = _required_str(record, "relation").lower()
    if relation not in cfg.relations:
        raise _RowError("relation", f"unknown relation {relation!r}: expected one of {', '.join(cfg.relations)}")
    if source == target:
        raise _RowError("target", f"self-link: {source!r} links to itself")
    for key, value in (("source", source), ("target", target)):
        if value not in known:
            raise _RowError(key, f"{value!r} is not a known ticket id")
    return Link(source, target, relation)


def text_id(text: str) -> str:
    """A stable id for a text in pairs mode, so the same text is one node of the split graph."""
    return "t" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def parse_pairs(data: bytes, uri: str, cfg: DataConfig, tickets: dict[str, Ticket]) -> tuple[list[ScoredPair], FileReport]:
    parsed = _parse_file(data, uri, cfg)
    report, pairs = parsed.report, []
    csv_input = detect_format(basename(uri), cfg.format) == "csv"
    for where, record in parsed.rows:
        row = _run_row(report, where, lambda r=record: (
            _required_str(r, "text_a"), _required_str(r, "text_b"), _score(r, "score", csv_input)))
        if row is None:
            continue
        ids = [_text_node(text, tickets) for text in row[:2]]
        if ids[0] == ids[1]:
            report.problems.append(Problem(report.name, where, "text_b", "text_b is the same text as text_a"))
            continue
        pairs.append(ScoredPair(ids[0], ids[1], row[2]))
    report.kept = len(pairs)
    return pairs, report


def parse_relationship_pairs(data: bytes, uri: str, cfg: DataConfig, tickets: dict[str, Ticket]) -> tuple[list[Link], FileReport]:
    parsed = _parse_file(data, uri, cfg)
    report, links = parsed.report, []
    for where, record in parsed.rows:
        row = _run_row(report, where, lambda r=record: _relationship_row(r, cfg))
        if row is None:
            continue
        links.append(Link(_text_node(row[0], tickets), _text_node(row[1], tickets), row[2]))
    report.kept = len(links)
    return links, report


def _relationship_row(record: dict[str, Any], cfg: DataConfig) -> tuple[str, str, str]:
    a, b = _required_str(record, "text_a"), _required_str(record, "text_b")
    relation = _required_str(record, "relation").lower()
    if relation not in cfg.relations:
        raise _RowError("relation", f"unknown relation {relation!r}: expected one of {', '.join(cfg.relations)}")
    if a == b:
        raise _RowError("text_b", "text_b is the same text as text_a")
    return a, b, relation


def _text_node(text: str, tickets: dict[str, Ticket]) -> str:
    node = text_id(text)
    tickets.setdefault(node, Ticket(node, text))
    return node


# ---------------------------------------------------------------- corpus


def build_corpus(inputs: dict[str, tuple[str, bytes]], cfg: DataConfig) -> Corpus:
    """Parse the inputs (name -> (uri, bytes)) and apply the error policy.

    `inputs` keys: 'tickets' and 'links', or 'pairs' and optionally 'relationship_pairs'.
    """
    reports: list[FileReport] = []
    links: list[Link] = []
    scored: list[ScoredPair] | None = None
    tickets: dict[str, Ticket] = {}
    if "tickets" in inputs:
        uri, data = inputs["tickets"]
        tickets, report = parse_tickets(data, uri, cfg)
        reports.append(report)
        if "links" in inputs:
            uri, data = inputs["links"]
            links, report = parse_links(data, uri, cfg, tickets)
            reports.append(report)
    elif "pairs" in inputs:
        uri, data = inputs["pairs"]
        scored, report = parse_pairs(data, uri, cfg, tickets)
        reports.append(report)
        if "relationship_pairs" in inputs:
            uri, data = inputs["relationship_pairs"]
            links, report = parse_relationship_pairs(data, uri, cfg, tickets)
            reports.append(report)
    else:
        raise InputError("no input configured: set data.tickets (and data.links) or data.pairs")
    corpus = Corpus(tickets, links, scored, reports)
    problems = corpus.problems
    fatal = [p for p in problems if p.location is None]  # whole-file problems: nothing to skip to
    if problems and (cfg.on_error == "fail" or fatal):
        total = sum(r.rows for r in reports)
        raise InputError(f"{len(problems)} problem(s) in the input ({total} rows read; data.on_error={cfg.on_error})",
                         problems)
    return corpus


def require_enough(corpus: Corpus) -> None:
    """After skipping, make sure something trainable is left, or say exactly what is missing."""
    if len(corpus.tickets) < 2:
        raise InputError(f"only {len(corpus.tickets)} usable ticket(s) left: need at least 2 to build pairs",
                         corpus.problems)
    if corpus.scored_pairs is None and not corpus.links:
        raise InputError("no usable links: positive pairs come from links, so at least one is needed", corpus.problems)
    if corpus.scored_pairs is not None and not corpus.scored_pairs:
        raise InputError("no usable training pairs left", corpus.problems)
