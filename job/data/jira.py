"""Turn a Jira export (REST API search-response pages, or one issue per file) into tickets and links.

The rules are the ones ../shared/DATA.md ("How the fields were made") made data/sample with, from the very
pages in data/jira-sample:

* ticket: `key`; `fields.summary` with whitespace runs collapsed; `fields.description` cleaned
  (`clean_description`); the first component, else the first label, as category; `fields.project.key`;
  `fields.created` as ISO-8601 with offset.
* link: issue A holding `outwardIssue: B` reads "A <outward> B" and becomes source A, target B; holding
  `inwardIssue: B` it reads "B <outward> A". The type's outward wording must be the configured one
  (data.jira.link_types), so a type renamed or turned round in Jira is refused rather than read backwards.
  Each Jira link is read once although both its issues list it (its link id); it is kept only when both
  issues are in the export; an unordered relation (duplicate, relates) is kept once per pair.

The records then go through the same checks as a JSONL export (job/data/records.py), so a Jira ticket is
held to the same rules and its problems read the same: file, issue key, field, what was expected. Nothing
here reads storage: `jira_corpus` takes the files' bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from job.config import DataConfig, JiraLinkType
from job.data.records import (
    BOM,
    Corpus,
    FileReport,
    LinkTable,
    TicketTable,
    add_links,
    add_tickets,
    apply_error_policy,
)
from job.errors import Problem
from job.storage import InputFile, basename

# The fields a search must ask for (fields=...): what the rules read, plus what DATA.md's pages carry.
SEARCH_FIELDS = (
    "summary",
    "description",
    "components",
    "created",
    "issuelinks",
    "project",
    "issuetype",
    "status",
    "resolution",
    "labels",
)
MAX_DESCRIPTION = 4000
# C0 controls but tab and line feed, DEL and the C1 controls: invisible, and NUL cannot be stored.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LONG_BLANKS = re.compile(r"[ \t]{9,}")
_BLANK_LINES = re.compile(r"\n\s*\n\s*\n\s*")  # three line breaks or more, with the blanks around them
# Where data.py names a ticket field, a Jira export has these.
_JIRA_FIELD = {
    "id": "key",
    "title": "fields.summary",
    "description": "fields.description",
    "category": "fields.components",
    "project": "fields.project.key",
    "created": "fields.created",
}
# Why a link was not kept (Corpus.dropped).
OUTSIDE = "the other issue is not in the export"
REPEATED = "already linked (an unordered relation given both ways, or the same link twice)"
BAD_ENTRY = "a bad link entry (see the problems)"


def clean_title(summary: str) -> str:
    """`fields.summary` with every whitespace run collapsed to one space."""
    return re.sub(r"\s+", " ", summary).strip()


def clean_description(description: str | None) -> str:
    """`fields.description` as DATA.md cleans it; the wiki markup itself ({code}, *bold*) is kept.

    CRLF -> LF, control characters removed, runs of 9 or more spaces/tabs -> one space, three line breaks or
    more -> one blank line, trimmed, then cut at 4,000 characters. Empty when Jira had none.
    """
    if not description:
        return ""
    text = _CONTROL.sub("", description.replace("\r\n", "\n"))
    text = _BLANK_LINES.sub("\n\n", _LONG_BLANKS.sub(" ", text))
    return text.strip()[:MAX_DESCRIPTION]


def created_iso(value: str) -> str:
    """Jira's `2013-10-21T18:39:02.000+0000` as `2013-10-21T18:39:02+00:00` (ValueError if it is not
    a time)."""
    try:
        moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("no offset")
    return moment.isoformat(timespec="seconds")


def export_checksum(files: list[InputFile]) -> str:
    """sha256 of an export: each file's path under the export and its sha256, so moving it changes nothing."""
    listing = "".join(
        f"{f.name}\0{hashlib.sha256(f.data).hexdigest()}\n" for f in sorted(files, key=lambda f: f.name)
    )
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- files


@dataclass
class _Page:
    """What one file held: its issues (as parsed), and, for a search response, where in the search they
    sit."""

    file: InputFile
    issues: list[Any]
    search: bool = False  # a search response (else one issue)
    start_at: int | None = None
    total: int | None = None
    cut: str | None = None  # why the file ends early, when it does


class _Unusable(Exception):
    """The file as a whole is not a Jira export; the message says what it is instead."""


def _read_page(file: InputFile) -> _Page:
    data = file.data[len(BOM) :] if file.data.startswith(BOM) else file.data
    if not data.strip():
        raise _Unusable("file is empty: expected a Jira search response or issue")
    text = data.decode("utf-8", errors="surrogateescape")  # bad bytes are named by the field check
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        return _cut_page(file, text, exc)
    except RecursionError:
        raise _Unusable("JSON nested too deeply: expected a Jira search response or issue") from None
    if isinstance(body, dict) and isinstance(body.get("issues"), list):
        return _Page(file, body["issues"], True, _count(body.get("startAt")), _count(body.get("total")))
    if isinstance(body, dict) and "fields" in body and "key" in body:
        return _Page(file, [body])
    raise _Unusable(_what_instead(body))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _what_instead(body: Any) -> str:
    expected = (
        "expected a Jira search response {startAt, maxResults, total, issues} or one issue {key, fields}"
    )
    if isinstance(body, dict) and isinstance(body.get("errorMessages"), list):
        said = "; ".join(str(m)[:200] for m in body["errorMessages"][:3])
        return f"this is a Jira error response ({said or 'no message'}), not a search response: export again"
    if isinstance(body, dict):
        keys = ", ".join(sorted(str(k)[:40] for k in body)[:8])
        return f"a JSON object with keys {keys or '(none)'}: {expected}"
    return f"a JSON {type(body).__name__}: {expected}"


def _cut_page(file: InputFile, text: str, error: json.JSONDecodeError) -> _Page:
    """A file that is not whole JSON: the issues complete before the cut, if it is a search response that
    says where its issues sit (then the issues lost can be counted); else the file is unusable."""
    header, issues = _salvage(text)
    start_at, total = _count(header.get("startAt")), _count(header.get("total"))
    if "issues" not in header or start_at is None or total is None:
        raise _Unusable(
            f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}; expected a "
            "Jira search response or issue"
        )
    keys = [issue.get("key") for issue in issues if isinstance(issue, dict)]
    after = f"after issue {keys[-1]}" if keys and isinstance(keys[-1], str) else "before its first issue"
    return _Page(
        file,
        issues,
        True,
        start_at,
        total,
        cut=f"the file ends early {after} (invalid JSON at line {error.lineno} column {error.colno}: "
        f"{error.msg}): the page was cut",
    )


def _salvage(text: str) -> tuple[dict[str, Any], list[Any]]:
    """The top-level fields of a cut JSON object that were complete, and the complete items of its "issues"
    array ("issues" is in the header as None once the array has started)."""
    decoder, header, issues = json.JSONDecoder(), {}, []  # type: ignore[var-annotated]
    scan_string = json.decoder.scanstring  # type: ignore[attr-defined]
    blank = re.compile(r"[ \t\r\n]*")

    def skip(at: int) -> int:
        match = blank.match(text, at)
        return match.end() if match else at

    at = skip(0)
    if text[at : at + 1] != "{":
        return header, issues
    at = skip(at + 1)
    try:
        while text[at] == '"':
            key, at = scan_string(text, at + 1)
            at = skip(at)
            if text[at] != ":":
                break
            at = skip(at + 1)
            if key == "issues" and text[at] == "[":
                header["issues"] = None
                at = skip(at + 1)
                while text[at] != "]":
                    item, at = decoder.raw_decode(text, at)
                    issues.append(item)
                    at = skip(at)
                    at = skip(at + 1) if text[at] == "," else at
                at += 1
            else:
                header[key], at = decoder.raw_decode(text, at)
            at = skip(at)
            at = skip(at + 1) if text[at] == "," else at
    except (ValueError, IndexError, RecursionError):
        pass  # the cut: what was complete before it is all there is
    return header, issues


# ---------------------------------------------------------------- issues


class _FieldProblem(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _issue_key(issue: dict[str, Any]) -> str | None:
    key = issue.get("key")
    return key.strip() if isinstance(key, str) and key.strip() else None


def _where(issue: Any, number: int) -> str:
    """How a problem names an issue: by its key, or by its place in the page when it has none."""
    key = _issue_key(issue) if isinstance(issue, dict) else None
    if key:
        return f"issue {key}"
    jira_id = issue.get("id") if isinstance(issue, dict) else None
    return f"issue {number}" + (f" (id {str(jira_id)[:20]})" if isinstance(jira_id, str | int) else "")


def _ticket_record(issue: Any) -> dict[str, Any]:
    """The ticket row of one issue, by DATA.md's rules; _FieldProblem when the issue cannot give one."""
    if not isinstance(issue, dict):
        raise _FieldProblem("", f"expected an issue object, got {_type_name(issue)}")
    key = _issue_key(issue)
    if key is None:
        raise _FieldProblem(
            "key",
            f"is missing or empty (got {_type_name(issue.get('key'))}): expected the "
            "issue key, e.g. PROJ-123",
        )
    fields = issue.get("fields")
    if not isinstance(fields, dict):
        raise _FieldProblem("fields", f"expected an object of the issue's fields, got {_type_name(fields)}")
    summary, description = fields.get("summary"), fields.get("description")
    if summary is not None and not isinstance(summary, str):
        raise _FieldProblem("fields.summary", f"expected a string, got {_type_name(summary)}")
    if isinstance(description, dict):
        raise _FieldProblem(
            "fields.description",
            "is an Atlassian Document Format object (REST API v3): "
            "expected wiki markup text; export with /rest/api/2/search",
        )
    if description is not None and not isinstance(description, str):
        raise _FieldProblem("fields.description", f"expected a string or null, got {_type_name(description)}")
    created = fields.get("created")
    if created is not None:
        if not isinstance(created, str):
            raise _FieldProblem("fields.created", f"expected a date-time string, got {_type_name(created)}")
        try:
            created = created_iso(created)
        except ValueError:
            raise _FieldProblem(
                "fields.created",
                f"expected a date-time like 2013-10-21T18:39:02.000+0000, got {created[:40]!r}",
            ) from None
    return {
        "id": key,
        "title": clean_title(summary or ""),
        "description": clean_description(description),
        "category": _category(fields),
        "project": _project(fields),
        "created": created,
    }


def _category(fields: dict[str, Any]) -> str | None:
    """The first component's name, else the first label, else None."""
    components, labels = fields.get("components") or [], fields.get("labels") or []
    if not isinstance(components, list) or any(not isinstance(c, dict) for c in components):
        raise _FieldProblem("fields.components", "expected an array of components {name}")
    if not isinstance(labels, list) or any(not isinstance(label, str) for label in labels):
        raise _FieldProblem("fields.labels", "expected an array of strings")
    if components:
        name = components[0].get("name")
        if not isinstance(name, str):
            raise _FieldProblem(
                "fields.components", f"the first component's name is {_type_name(name)}: expected a string"
            )
        return name
    return labels[0] if labels else None


def _project(fields: dict[str, Any]) -> str | None:
    project = fields.get("project")
    if project is None:
        return None
    key = project.get("key") if isinstance(project, dict) else None
    if not isinstance(key, str):
        raise _FieldProblem("fields.project.key", "expected the project's key, a string")
    return key


# ---------------------------------------------------------------- links


@dataclass(frozen=True)
class _LinkView:
    """One issuelinks entry, read from the issue holding it: "source <outward> target"."""

    source: str
    target: str
    type_name: str
    outward: str | None
    identity: tuple[str, ...]  # the same Jira link seen from its other issue has the same one


def _link_view(key: str, entry: Any) -> _LinkView:
    if not isinstance(entry, dict):
        raise _FieldProblem("", f"expected a link object, got {_type_name(entry)}")
    link_type = entry.get("type")
    name = link_type.get("name") if isinstance(link_type, dict) else None
    if not isinstance(name, str) or not name:
        raise _FieldProblem("type.name", "is missing: expected the link type's name")
    outward = link_type.get("outward") if isinstance(link_type, dict) else None
    for side in ("outwardIssue", "inwardIssue"):
        if side in entry:
            other = entry[side].get("key") if isinstance(entry[side], dict) else None
            if not isinstance(other, str) or not other.strip():
                raise _FieldProblem(f"{side}.key", "is missing: expected the linked issue's key")
            source, target = (key, other.strip()) if side == "outwardIssue" else (other.strip(), key)
            jira_id = entry.get("id")
            identity = (str(jira_id),) if isinstance(jira_id, str | int) else (name, source, target)
            return _LinkView(source, target, name, outward if isinstance(outward, str) else None, identity)
    raise _FieldProblem("", "has neither outwardIssue nor inwardIssue: expected the linked issue")


def _same_wording(given: str | None, expected: str) -> bool:
    def norm(text: str) -> str:
        return " ".join(text.split()).casefold()

    return given is not None and norm(given) == norm(expected)


@dataclass
class _Links:
    """The link rows made so far, what was left out and why, and which Jira links were already read."""

    report: FileReport
    rows: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (file, where, row)
    dropped: Counter[str] = field(default_factory=Counter)
    read: set[tuple[str, ...]] = field(default_factory=set)

    def problem(self, file: str, where: str, field_name: str, message: str, reason: str = BAD_ENTRY) -> None:
        self.report.rows += 1
        self.report.problems.append(Problem(file, where, field_name or None, message))
        self.dropped[reason] += 1


def _issue_links(
    issue: dict[str, Any],
    file: str,
    types: dict[str, JiraLinkType],
    ignored: set[str],
    in_export: set[str],
    links: _Links,
) -> None:
    key, where = _issue_key(issue), _where(issue, 0)
    fields = issue.get("fields")
    entries = fields.get("issuelinks") if isinstance(fields, dict) else None
    if key is None or not isinstance(fields, dict):
        return  # the ticket's own problem says why; its links are read from the issues at their other end
    if not isinstance(entries, list):
        links.problem(
            file,
            where,
            "fields.issuelinks",
            f"expected an array of links, got {_type_name(entries)} "
            f"(a search must ask for it: fields={','.join(SEARCH_FIELDS)})",
        )
        return
    for number, entry in enumerate(entries):
        at = f"fields.issuelinks[{number}]"
        try:
            view = _link_view(key, entry)
        except _FieldProblem as exc:
            links.problem(file, where, f"{at}.{exc.field_name}".rstrip("."), str(exc))
            continue
        if view.identity in links.read:
            continue  # the same Jira link, seen from its other issue
        links.read.add(view.identity)
        if view.type_name in ignored:
            links.dropped[f"link type {view.type_name} (data.jira.ignored_link_types)"] += 1
            continue
        mapped = types.get(view.type_name)
        if mapped is None:
            links.problem(
                file,
                where,
                f"{at}.type.name",
                f"unknown link type {view.type_name[:60]!r} (outward {str(view.outward)[:60]!r}): map "
                "it in data.jira.link_types or list it in data.jira.ignored_link_types",
                reason=f"unknown link type {view.type_name[:60]}",
            )
            continue
        if not _same_wording(view.outward, mapped.outward):
            links.problem(
                file,
                where,
                f"{at}.type.outward",
                f"link type {view.type_name!r} reads {str(view.outward)[:60]!r} outward, expected "
                f"{mapped.outward!r} (data.jira.link_types): the type was renamed or turned round in "
                "Jira; check which way it reads and set its wording",
                reason=f"outward wording of {view.type_name} changed",
            )
            continue
        if view.source not in in_export or view.target not in in_export:
            links.dropped[OUTSIDE] += 1
            continue
        links.report.rows += 1
        links.rows.append(
            (
                file,
                f"{where} {at}",
                {"source": view.source, "target": view.target, "relation": mapped.relation},
            )
        )


# ---------------------------------------------------------------- the export


def _coverage_problems(pages: list[_Page], report: FileReport) -> None:
    """Issues of the search that no page holds (a page cut, short or missing): each counts as a bad row.

    Every search response must say where it sits (startAt, total); a search API whose pages do not (Jira
    Cloud's /search/jql) is not checked. Files holding one issue each are not part of a search.
    """
    searches = [p for p in pages if p.search]
    if not searches or any(p.start_at is None or p.total is None for p in searches):
        return
    total = max(p.total or 0 for p in searches)
    reached, previous = 0, None
    for page in sorted(searches, key=lambda p: (p.start_at or 0, p.file.name)):
        start = page.start_at or 0
        if start > reached:
            _missing(previous, reached, min(start, total), total, report)
        reached, previous = max(reached, start + len(page.issues)), page
    if reached < total:
        _missing(previous, reached, total, total, report)


def _missing(before: _Page | None, first: int, end: int, total: int, report: FileReport) -> None:
    count = end - first
    what = (
        f"issues {first + 1}-{end} of the search's {total} are" if count > 1 else f"issue {end} of {total} is"
    )
    if before is not None and before.cut:
        file, message = before.file.uri, f"{before.cut}; {what} lost: export again"
    elif before is not None:
        file, message = before.file.uri, f"{what} in no page (after this one): a page is missing or short"
    else:
        file, message = report.name, f"{what} in no page: the first page is missing"
    report.rows += count
    report.problems.append(Problem(file, None, None, message))


def jira_corpus(files: list[InputFile], cfg: DataConfig, export_uri: str) -> Corpus:
    """Tickets and links from the files of a Jira export, checked as data.py checks any input, with
    data.on_error applied (InputError naming file, issue and field when it refuses).

    The corpus has two reports: the export's issues (one row each, and one per issue no page holds) and its
    links (one row per Jira link between two issues of the export, of a mapped or unknown type); links left
    out on purpose are counted in `dropped` by reason.
    """
    checksum = export_checksum(files)
    tickets_report = FileReport(name=export_uri, sha256=checksum)
    links = _Links(FileReport(name=f"{export_uri} (issuelinks)", sha256=checksum))
    pages: list[_Page] = []
    for file in files:
        try:
            pages.append(_read_page(file))
        except _Unusable as exc:
            problem = Problem(file.uri, None, None, str(exc))
            tickets_report.problems.append(problem)
            tickets_report.fatal.append(problem)
    table = TicketTable()
    for page in pages:
        tickets_report.rows += len(page.issues)
        _add_page_tickets(page, tickets_report, cfg, table)
    _coverage_problems(pages, tickets_report)
    in_export = {
        key
        for page in pages
        for issue in page.issues
        if isinstance(issue, dict) and (key := _issue_key(issue))
    }
    types, ignored = cfg.jira.link_types, set(cfg.jira.ignored_link_types)
    for page in pages:
        for issue in page.issues:
            if isinstance(issue, dict):
                _issue_links(issue, page.file.uri, types, ignored, in_export, links)
    link_table = LinkTable()
    for page_uri, where, row in links.rows:
        before = len(links.report.problems)
        add_links([(where, row)], links.report, cfg, table.tickets, link_table, table.rejected, page_uri)
        if len(links.report.problems) > before:
            links.dropped[BAD_ENTRY] += 1
    if links.report.duplicates_dropped:
        links.dropped[REPEATED] += links.report.duplicates_dropped
    corpus = Corpus(
        table.tickets,
        link_table.links,
        None,
        [tickets_report, links.report],
        dict(links.dropped.most_common()),
    )
    return apply_error_policy(corpus, cfg)


def _add_page_tickets(page: _Page, report: FileReport, cfg: DataConfig, table: TicketTable) -> None:
    """The page's issues as ticket rows through data.py's checks, with problems named as Jira names fields."""
    rows: list[tuple[str, dict[str, Any]]] = []
    for number, issue in enumerate(page.issues, start=1):
        where = _where(issue, number)
        try:
            rows.append((where, _ticket_record(issue)))
        except _FieldProblem as exc:
            report.problems.append(Problem(page.file.uri, where, exc.field_name or None, str(exc)))
            key = _issue_key(issue) if isinstance(issue, dict) else None
            if key:
                table.rejected.setdefault(key, f"{basename(page.file.uri)} {where}")
    before = len(report.problems)
    add_tickets(rows, report, cfg, table, page.file.uri)
    report.problems[before:] = [
        replace(p, field=_JIRA_FIELD.get(p.field or "", p.field)) for p in report.problems[before:]
    ]
