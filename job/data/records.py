"""Read and validate tickets, links and prebuilt pairs from JSONL, JSON arrays or CSV.

Every bad row becomes a `Problem` naming file, line (or item), field and what was
expected. The loaders collect all problems; `build_corpus` then applies `data.on_error`:
`fail` raises one InputError listing them, `skip` drops those rows and counts them.
Problems that make a whole file unreadable (empty, not UTF-8 for a JSON array, broken CSV
quoting, a CSV header without the needed columns) fail under either policy: nothing
after them can be trusted, so skipping would lose rows without counting them.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from job.config import UNORDERED_RELATIONS, DataConfig
from job.errors import InputError, Problem
from job.storage import basename

Format = Literal["jsonl", "json", "csv"]
Kind = Literal["tickets", "links", "pairs", "relationship_pairs"]

BOM = b"\xef\xbb\xbf"
# Columns a CSV header must have for each kind of input (tickets need one of title/description too).
REQUIRED_COLUMNS: dict[Kind, tuple[str, ...]] = {
    "tickets": ("id",),
    "links": ("source", "target", "relation"),
    "pairs": ("text_a", "text_b", "score"),
    "relationship_pairs": ("text_a", "text_b", "relation"),
}


@dataclass(frozen=True)
class Ticket:
    id: str
    text: str
    category: str | None = None
    project: str | None = None
    created: str | None = None
    # The two fields apart, as read (the in-domain title/body objective pairs them); not in
    # prepared/tickets.jsonl, and not part of a ticket's identity (`text` is).
    title: str = field(default="", compare=False)
    description: str = field(default="", compare=False)


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
    """What one input file held: rows read, kept, skipped (with why), and its checksum.

    `fatal` lists the problems that make the whole file unusable (a subset of `problems`).
    """

    name: str
    sha256: str
    rows: int = 0
    kept: int = 0
    problems: list[Problem] = field(default_factory=list)
    duplicates_dropped: int = 0
    fatal: list[Problem] = field(default_factory=list)

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
    # Records not kept, by reason, where an input is converted rather than read row for row (a Jira export:
    # links to issues outside it, ignored link types; the bad ones are also among the problems).
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def problems(self) -> list[Problem]:
        return [p for r in self.reports for p in r.problems]

    def edges(self) -> list[tuple[str, str]]:
        """Pairs of tickets the split must keep together: every link and every given pair."""
        edges = [(link.source, link.target) for link in self.links]
        if self.scored_pairs is not None:
            edges += [(p.a, p.b) for p in self.scored_pairs]
        return edges


# ---------------------------------------------------------------- records
#
# iter_records yields (location, record) for good rows, (location, Problem) for a bad row,
# and ("", Problem) for a problem with the whole file.


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
    raise InputError(
        f"{name}: cannot tell the format from the extension; set data.format to jsonl, json or csv"
    )


def _nan_or_infinity(name: str) -> float:
    # Accepted while parsing so the field check can say which field holds it and what it expects.
    return float(name.replace("Infinity", "inf"))


def iter_records(data: bytes, name: str, fmt: Format) -> Iterator[tuple[str, dict[str, Any] | Problem]]:
    """Yield (location, record) for good rows and (location, Problem) for rows that cannot be parsed.

    A Problem yielded with an empty location concerns the whole file.
    """
    if data.startswith(BOM):
        data = data[len(BOM) :]  # a UTF-8 BOM is harmless; Excel writes one
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        yield (
            "",
            Problem(
                name,
                None,
                None,
                "the file is UTF-16 (it starts with a UTF-16 byte order mark): expected UTF-8",
            ),
        )
        return
    if not data.strip():
        yield "", Problem(name, None, None, "file is empty: expected at least one record")
        return
    if fmt == "jsonl":
        yield from _iter_jsonl(data, name)
    elif fmt == "json":
        yield from _iter_json_array(data, name)
    else:
        yield from _iter_csv(data, name)


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its ending) without holding a list of every line."""
    start, number = 0, 1
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            end = len(data)
        yield number, data[start:end].rstrip(b"\r")
        start, number = end + 1, number + 1


class _RepeatedKeys(dict[str, Any]):
    """A JSON object that named a key twice; json would silently keep only the last value."""

    repeated: str = ""


def _object_from_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) == len(pairs):
        return record
    seen: set[str] = set()
    marked = _RepeatedKeys(record)
    marked.repeated = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
    return marked


def _parse_json(text: str) -> Any:
    return json.loads(text, parse_constant=_nan_or_infinity, object_pairs_hook=_object_from_pairs)


def _repeated_key_problem(name: str, where: str, record: dict[str, Any]) -> Problem | None:
    if not isinstance(record, _RepeatedKeys):
        return None
    return Problem(
        name, where, _clip(record.repeated), "appears twice in the object: expected each field once"
    )


def _iter_jsonl(data: bytes, name: str) -> Iterator[tuple[str, dict[str, Any] | Problem]]:
    if data.lstrip()[:1] == b"[":
        yield (
            "",
            Problem(
                name,
                "line 1",
                None,
                "this is a JSON array but the file is read as JSON Lines; set data.format: json",
            ),
        )
        return
    for number, line in _lines(data):
        where = f"line {number}"
        if line.startswith(BOM):
            line = line[len(BOM) :]  # files concatenated with cat keep each one's BOM
        if not line.strip():
            continue
        nul = line.find(b"\x00")
        if nul >= 0:
            yield where, Problem(name, where, None, f"contains a NUL byte at column {nul + 1}: expected text")
            continue
        # Bytes that are not UTF-8 survive decoding as surrogates, so the field check can name the field.
        text = line.decode("utf-8", errors="surrogateescape")
        try:
            record = _parse_json(text)
        except json.JSONDecodeError as exc:
            yield (
                where,
                Problem(
                    name,
                    where,
                    None,
                    f"invalid JSON at column {exc.colno}: {exc.msg}; expected one JSON object per line",
                ),
            )
            continue
        except (ValueError, RecursionError) as exc:
            yield where, Problem(name, where, None, f"invalid JSON: {_short(exc)}")
            continue
        if not isinstance(record, dict):
            yield where, Problem(name, where, None, f"expected a JSON object, got {_type_name(record)}")
            continue
        yield where, _repeated_key_problem(name, where, record) or record


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def _iter_json_array(data: bytes, name: str) -> Iterator[tuple[str, dict[str, Any] | Problem]]:
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        yield "", Problem(name, f"line {line}", None, "contains a NUL byte: expected text")
        return
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        items = _parse_json(text)
    except json.JSONDecodeError as exc:
        hint = (
            " (it looks like JSON Lines; set data.format: jsonl)"
            if exc.msg == "Extra data" and text.lstrip().startswith("{")
            else ""
        )
        yield (
            "",
            Problem(
                name,
                f"line {exc.lineno}",
                None,
                f"invalid JSON at column {exc.colno}: {exc.msg}; expected one JSON array of objects{hint}",
            ),
        )
        return
    except (ValueError, RecursionError) as exc:
        yield "", Problem(name, None, None, f"invalid JSON: {_short(exc)}")
        return
    if not isinstance(items, list):
        yield "", Problem(name, None, None, f"expected a JSON array of objects, got {_type_name(items)}")
        return
    if not items:
        yield "", Problem(name, None, None, "the array is empty: expected at least one record")
    for number, item in enumerate(items, start=1):
        where = f"item {number}"
        if isinstance(item, dict):
            yield where, _repeated_key_problem(name, where, item) or item
        else:
            yield where, Problem(name, where, None, f"expected a JSON object, got {_type_name(item)}")


@contextlib.contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    """The csv module refuses fields over 128 KiB by default; a long description is still valid data."""
    previous = csv.field_size_limit(max(limit, csv.field_size_limit()))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _iter_csv(data: bytes, name: str) -> Iterator[tuple[str, dict[str, Any] | Problem]]:
    text = data.decode("utf-8", errors="surrogateescape")
    with _csv_field_limit(len(data) + 1):
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            header = next(reader)
        except (StopIteration, csv.Error) as exc:
            yield "", Problem(name, "line 1", None, f"cannot read the CSV header: {exc}")
            return
        header = [h.strip() for h in header]
        # linear: headers may be huge
        duplicated = sorted(h for h, count in Counter(header).items() if count > 1)
        if duplicated:
            shown = ", ".join(_clip(h) for h in duplicated[:10]) + (
                f" and {len(duplicated) - 10} more" if len(duplicated) > 10 else ""
            )
            yield (
                "",
                Problem(
                    name,
                    "line 1",
                    None,
                    f"the CSV header repeats column(s) {shown}: expected each column once",
                ),
            )
            return
        rows = 0
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                # The reader cannot resync after a quoting error: the rows after it are unknown,
                # so the file fails as a whole rather than losing them uncounted.
                yield (
                    "",
                    Problem(
                        name,
                        f"line {reader.line_num}",
                        None,
                        f"broken CSV quoting: {exc}; expected fields in double quotes with inner "
                        'quotes doubled ("")',
                    ),
                )
                return
            rows += 1
            where = f"line {reader.line_num}"
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                yield (
                    where,
                    Problem(
                        name,
                        where,
                        None,
                        f"row has {len(values)} fields, expected {len(header)} like the header",
                    ),
                )
                continue
            yield where, dict(zip(header, values, strict=True))
    if rows == 0:
        yield "", Problem(name, None, None, "the CSV has a header but no rows: expected at least one record")


def check_csv_header(data: bytes, name: str, kind: Kind) -> Problem | None:
    """A whole-file problem when the CSV header lacks a column this kind of input needs."""
    if data.startswith(BOM):
        data = data[len(BOM) :]
    first = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
    try:
        header = [h.strip() for h in next(csv.reader([first]))]
    except (StopIteration, csv.Error):
        return None  # _iter_csv reports an unreadable header
    required = list(REQUIRED_COLUMNS[kind])
    missing = [c for c in required if c not in header]
    if kind == "tickets" and not {"title", "description"} & set(header):
        missing.append("title or description")
    if not missing:
        return None
    found = ", ".join(repr(h) for h in header[:10]) + (" ..." if len(header) > 10 else "")
    hint = ""
    if len(header) == 1:
        for delimiter, label in ((";", "';'"), ("\t", "a tab"), ("|", "'|'")):
            if delimiter in header[0]:
                hint = (
                    f" (the header is one column: the file seems to use {label} as the delimiter; "
                    "expected ',')"
                )
                break
    return Problem(
        name,
        "line 1",
        None,
        f"the CSV header has no column {', '.join(missing)}: expected columns "
        f"{', '.join(required)}; found {found}{hint}",
    )


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


# ---------------------------------------------------------------- fields


class _RowError(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


def _valid_text(key: str, value: str) -> str:
    """Reject strings that cannot be written back as UTF-8: undecodable bytes or lone surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        what = (
            f"byte 0x{ord(bad) - 0xDC00:02x} that is not UTF-8"
            if 0xDC80 <= ord(bad) <= 0xDCFF
            else f"an unpaired surrogate \\u{ord(bad):04x}"
        )
        raise _RowError(key, f"contains {what} at character {exc.start + 1}: expected UTF-8 text") from None
    if "\x00" in value:
        raise _RowError(
            key, f"contains a NUL character at character {value.index(chr(0)) + 1}: expected text"
        )
    return value


def _required_str(record: dict[str, Any], key: str) -> str:
    if key not in record or record[key] is None:
        raise _RowError(key, "is missing: expected a non-empty string")
    value = record[key]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # numeric ids are lossless as text
    if not isinstance(value, str):
        raise _RowError(key, f"expected a non-empty string, got {_type_name(value)}")
    if not value.strip():
        raise _RowError(key, "is empty: expected a non-empty string")
    return _valid_text(key, value.strip())


def _optional_str(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _RowError(key, f"expected a string or null, got {_type_name(value)}")
    return _valid_text(key, value)


def _score(record: dict[str, Any], key: str, from_csv: bool) -> float:
    if key not in record or record[key] in (None, ""):
        raise _RowError(key, "is missing: expected a number in [0, 1]")
    value = record[key]
    if from_csv and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _RowError(key, f"expected a number in [0, 1], got {_clip(record[key])!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _RowError(key, f"expected a number in [0, 1], got {_type_name(value)} {_clip(value)!r}")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise _RowError(key, f"expected a number in [0, 1], got {_clip(value)}")
    return float(value)


def _clip(value: Any) -> Any:
    """Values quoted in messages stay short: a bad cell may be megabytes."""
    if isinstance(value, str) and len(value) > 60:
        return value[:60] + "..."
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"a {len(str(abs(value)))}-digit number"
    return value


def _created(record: dict[str, Any]) -> str | None:
    value = _optional_str(record, "created")
    if value is None:
        return None
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _RowError("created", f"expected an ISO-8601 date-time, got {_clip(value)!r}") from None
    return value


# ---------------------------------------------------------------- files


@dataclass
class _Parsed:
    report: FileReport
    rows: list[tuple[str, dict[str, Any]]]
    csv_input: bool


def _parse_file(data: bytes, uri: str, cfg: DataConfig, kind: Kind) -> _Parsed:
    fmt = detect_format(basename(uri), cfg.format)
    report = FileReport(name=uri, sha256=hashlib.sha256(data).hexdigest())
    rows: list[tuple[str, dict[str, Any]]] = []
    header_problem = check_csv_header(data, uri, kind) if fmt == "csv" else None
    records = iter(()) if header_problem else iter_records(data, uri, fmt)
    if header_problem:
        report.problems.append(header_problem)
        report.fatal.append(header_problem)
    for where, item in records:
        if isinstance(item, Problem):
            report.problems.append(item)
            if where:
                report.rows += 1  # a bad row still counts as a row read
            else:
                report.fatal.append(item)
        else:
            report.rows += 1
            rows.append((where, item))
    return _Parsed(report, rows, fmt == "csv")


def _run_row(report: FileReport, where: str, check: Any, file: str | None = None) -> Any:
    try:
        return check()
    except _RowError as exc:
        report.problems.append(Problem(file or report.name, where, exc.field_name, str(exc)))
        return None


@dataclass
class TicketTable:
    """Tickets read so far, from one file or several (the pages of a Jira export).

    `first_seen` is where each id was read (file, location); `rejected` where a bad ticket row's id was,
    to explain a link to it.
    """

    tickets: dict[str, Ticket] = field(default_factory=dict)
    first_seen: dict[str, tuple[str, str]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)


def _place(file: str, where: str, from_file: str) -> str:
    """`where`, with its file's name when it is another file than the one a message is about."""
    return where if file == from_file else f"{basename(file)} {where}"


def add_tickets(
    rows: Iterable[tuple[str, dict[str, Any]]],
    report: FileReport,
    cfg: DataConfig,
    table: TicketTable,
    file: str | None = None,
) -> None:
    """Check ticket records (location, fields) into `table`; bad ones become problems in `report`.

    `file` names the records' file in problems when `report` covers several (default: the report's name).
    Rows are counted by the caller, which knows what a row is in its format.
    """
    file = file or report.name
    for where, record in rows:
        ticket = _run_row(report, where, lambda r=record: _ticket(r, cfg), file)
        if ticket is None:
            raw_id = record.get("id")
            if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) and str(raw_id).strip():
                table.rejected.setdefault(str(raw_id).strip(), _place(file, where, report.name))
            continue
        if ticket.id in table.tickets:
            first = _place(*table.first_seen[ticket.id], file)
            report.problems.append(
                Problem(
                    file,
                    where,
                    "id",
                    f"duplicate id {_clip(ticket.id)!r} (first at {first}): expected each id once",
                )
            )
            continue
        table.tickets[ticket.id], table.first_seen[ticket.id] = ticket, (file, where)
        report.kept += 1


def parse_tickets(data: bytes, uri: str, cfg: DataConfig) -> tuple[dict[str, Ticket], FileReport]:
    table, report = _parse_tickets(data, uri, cfg)
    return table.tickets, report


def _parse_tickets(data: bytes, uri: str, cfg: DataConfig) -> tuple[TicketTable, FileReport]:
    parsed = _parse_file(data, uri, cfg, "tickets")
    table = TicketTable()
    add_tickets(parsed.rows, parsed.report, cfg, table)
    # An id rejected in one row and kept in another is a known ticket: a link to it needs no explanation.
    for tid in table.tickets:
        table.rejected.pop(tid, None)
    return table, parsed.report


def _ticket(record: dict[str, Any], cfg: DataConfig) -> Ticket:
    ticket_id = _required_str(record, "id")
    parts = {}
    for key in ("title", "description"):
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise _RowError(key, f"expected a string, got {_type_name(value)}")
        parts[key] = _valid_text(key, (value or "").strip())
    if not parts["title"] and not parts["description"]:
        raise _RowError("title", "title and description are both empty: expected text in at least one")
    category, project = _optional_str(record, "category"), _optional_str(record, "project")
    text = cfg.text_template.format(
        id=ticket_id,
        title=parts["title"],
        description=parts["description"],
        category=category or "",
        project=project or "",
    ).strip()
    return Ticket(ticket_id, text, category, project, _created(record), parts["title"], parts["description"])


def link_identity(link: Link) -> tuple[str, str, str]:
    """Links with the same identity are one link: an unordered relation (UNORDERED_RELATIONS) reads the same
    both ways, so A-B and B-A are the same link, stored once; the others keep their direction."""
    if link.relation in UNORDERED_RELATIONS:
        first, second = sorted((link.source, link.target))
        return link.relation, first, second
    return link.relation, link.source, link.target


@dataclass
class LinkTable:
    """Links kept so far, and the identities (link_identity) already taken."""

    links: list[Link] = field(default_factory=list)
    seen: set[tuple[str, str, str]] = field(default_factory=set)


def add_links(
    rows: Iterable[tuple[str, dict[str, Any]]],
    report: FileReport,
    cfg: DataConfig,
    known: dict[str, Ticket],
    table: LinkTable,
    rejected: dict[str, str] | None = None,
    file: str | None = None,
) -> None:
    """Check link records (location, fields) between known tickets into `table`; bad ones become problems
    in `report`, a link already in the table is counted as a duplicate. `rejected`: ids of ticket rows that
    were bad, with their location. `file` as in add_tickets."""
    for where, record in rows:
        link = _run_row(report, where, lambda r=record: _link(r, cfg, known, rejected or {}), file)
        if link is None:
            continue
        key = link_identity(link)
        if key in table.seen:
            report.duplicates_dropped += 1  # the same link twice (or both directions of an unordered one)
            continue
        table.seen.add(key)
        table.links.append(link)
        report.kept += 1


def parse_links(
    data: bytes, uri: str, cfg: DataConfig, known: dict[str, Ticket], rejected: dict[str, str] | None = None
) -> tuple[list[Link], FileReport]:
    """Links between known tickets. `rejected`: ids of ticket rows that were bad, with their location."""
    parsed = _parse_file(data, uri, cfg, "links")
    table = LinkTable()
    add_links(parsed.rows, parsed.report, cfg, known, table, rejected)
    return table.links, parsed.report


def _link(
    record: dict[str, Any], cfg: DataConfig, known: dict[str, Ticket], rejected: dict[str, str]
) -> Link:
    source, target = _required_str(record, "source"), _required_str(record, "target")
    relation = _required_str(record, "relation").lower()
    if relation not in cfg.relations:
        raise _RowError(
            "relation", f"unknown relation {_clip(relation)!r}: expected one of {', '.join(cfg.relations)}"
        )
    if source == target:
        raise _RowError(
            "target", f"self-link: {_clip(source)!r} links to itself; expected two different tickets"
        )
    for key, value in (("source", source), ("target", target)):
        if value not in known:
            why = f" (its ticket row at {rejected[value]} was rejected)" if value in rejected else ""
            raise _RowError(
                key, f"{_clip(value)!r} is not a known ticket id{why}: expected an id from the tickets file"
            )
    return Link(source, target, relation)


def text_id(text: str) -> str:
    """A stable id for a text in pairs mode, so the same text is one node of the split graph."""
    return "t" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def parse_pairs(
    data: bytes, uri: str, cfg: DataConfig, tickets: dict[str, Ticket]
) -> tuple[list[ScoredPair], FileReport]:
    rows, report = _text_pair_rows(data, uri, cfg, "pairs", _scored_row)
    pairs = [ScoredPair(_text_node(a, tickets), _text_node(b, tickets), score) for a, b, score in rows]
    return pairs, report


def _scored_row(record: dict[str, Any], csv_input: bool) -> tuple[str, str, float]:
    a, b = _required_str(record, "text_a"), _required_str(record, "text_b")
    score = _score(record, "score", csv_input)
    if a == b:
        raise _RowError("text_b", "text_b is the same text as text_a: expected two different texts")
    return a, b, score


def parse_relationship_pairs(
    data: bytes, uri: str, cfg: DataConfig, tickets: dict[str, Ticket]
) -> tuple[list[Link], FileReport]:
    rows, report = _text_pair_rows(
        data, uri, cfg, "relationship_pairs", lambda record, _csv: _relationship_row(record, cfg)
    )
    links = [Link(_text_node(a, tickets), _text_node(b, tickets), relation) for a, b, relation in rows]
    return links, report


def _text_pair_rows(
    data: bytes, uri: str, cfg: DataConfig, kind: Kind, parse_row: Callable[[dict[str, Any], bool], Any]
) -> tuple[list[Any], FileReport]:
    """The rows of a file of two texts and a value (pairs, relationship_pairs) that `parse_row(record,
    csv_input)` accepts; a row it refuses is reported with its file:line:field (report.kept counts the
    rest)."""
    parsed = _parse_file(data, uri, cfg, kind)
    rows = []
    for where, record in parsed.rows:
        row = _run_row(parsed.report, where, lambda r=record: parse_row(r, parsed.csv_input))
        if row is not None:
            rows.append(row)
    parsed.report.kept = len(rows)
    return rows, parsed.report


def _relationship_row(record: dict[str, Any], cfg: DataConfig) -> tuple[str, str, str]:
    a, b = _required_str(record, "text_a"), _required_str(record, "text_b")
    relation = _required_str(record, "relation").lower()
    if relation not in cfg.relations:
        raise _RowError(
            "relation", f"unknown relation {_clip(relation)!r}: expected one of {', '.join(cfg.relations)}"
        )
    if a == b:
        raise _RowError("text_b", "text_b is the same text as text_a: expected two different texts")
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
        table, report = _parse_tickets(data, uri, cfg)
        tickets = table.tickets
        reports.append(report)
        if "links" in inputs:
            uri, data = inputs["links"]
            links, report = parse_links(data, uri, cfg, tickets, table.rejected)
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
    return apply_error_policy(Corpus(tickets, links, scored, reports), cfg)


def apply_error_policy(corpus: Corpus, cfg: DataConfig) -> Corpus:
    """The corpus, if data.on_error lets it through: whole-file problems always stop it, bad rows
    under `fail`."""
    problems = corpus.problems
    fatal = [p for r in corpus.reports for p in r.fatal]  # whole-file problems: nothing to skip to
    if fatal:
        raise InputError(
            f"{len(fatal)} input file(s) unusable as a whole (data.on_error={cfg.on_error} cannot skip them)",
            fatal + [p for p in problems if p not in fatal],
        )
    if problems and cfg.on_error == "fail":
        total = sum(r.rows for r in corpus.reports)
        raise InputError(
            f"{len(problems)} problem(s) in the input "
            f"({total} rows read; data.on_error={cfg.on_error}; "
            "set data.on_error: skip to drop and count bad rows)",
            problems,
        )
    return corpus


def require_enough(corpus: Corpus) -> None:
    """After skipping, make sure something trainable is left, or say exactly what is missing."""
    skipped = sum(r.skipped for r in corpus.reports)
    note = f" ({skipped} bad row(s) skipped)" if skipped else ""
    if len(corpus.tickets) < 2:
        raise InputError(
            f"only {len(corpus.tickets)} usable ticket(s) left{note}: need at least 2 to build pairs",
            corpus.problems,
        )
    if corpus.scored_pairs is None and not corpus.links:
        raise InputError(
            f"no usable links{note}: positive pairs come from links, so at least one is needed",
            corpus.problems,
        )
    if corpus.scored_pairs is not None and not corpus.scored_pairs:
        raise InputError(f"no usable training pairs left{note}", corpus.problems)
