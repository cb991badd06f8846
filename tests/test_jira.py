"""A Jira export becomes tickets and links (job/data/jira.py) by ../shared/DATA.md's rules.

The sample's own pages (../shared/data/jira-sample) must give exactly ../shared/data/sample; small pages
built here pin each rule on its own (direction, an unordered relation once, cleaning, the category
fallback, the outward wording) and each way an export can be bad.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from job.config import DataConfig, JiraLinkType, StorageConfig, load_config
from job.data.jira import (
    OUTSIDE,
    REPEATED,
    clean_description,
    clean_title,
    created_iso,
    export_checksum,
    jira_corpus,
)
from job.data.records import Corpus, Link, parse_links, parse_tickets
from job.errors import ConfigError, InputError
from job.storage import InputFile, read_input_files
from tests.conftest import REPO, TINY, merged, run_cli, write_config

# Apache's wording of each default type: (inward, outward).
WORDING = {
    "Duplicate": ("is duplicated by", "duplicates"),
    "Blocker": ("is blocked by", "blocks"),
    "Reference": ("is related to", "relates to"),
    "Regression": ("is broken by", "breaks"),
    "Incorporates": ("is part of", "incorporates"),
}


def link(link_id: int, type_name: str, side: str, other: str, outward: str | None = None) -> dict[str, Any]:
    """One issuelinks entry: `side` is "outward" (this issue <outward> other) or "inward"."""
    inward_text, outward_text = WORDING.get(type_name, ("is x-ed by", "x-es"))
    return {
        "id": str(link_id),
        "type": {"name": type_name, "inward": inward_text, "outward": outward or outward_text},
        f"{side}Issue": {"key": other, "fields": {"summary": "..."}},
    }


def issue(
    key: str,
    *links: dict[str, Any],
    summary: str = "Disk fills up",
    description: str | None = "It does.",
    components: tuple[str, ...] = (),
    labels: tuple[str, ...] = (),
) -> dict[str, Any]:
    return {
        "id": str(abs(hash(key)) % 10**8),
        "key": key,
        "fields": {
            "summary": summary,
            "description": description,
            "components": [{"id": "1", "name": c} for c in components],
            "labels": list(labels),
            "project": {"key": key.split("-")[0], "name": "Ops"},
            "created": "2020-01-02T03:04:05.000+0000",
            "issuelinks": list(links),
        },
    }


def page(*issues: dict[str, Any], start_at: int = 0, total: int | None = None) -> bytes:
    return json.dumps(
        {
            "expand": "schema,names",
            "startAt": start_at,
            "maxResults": 100,
            "total": len(issues) if total is None else total,
            "issues": list(issues),
        }
    ).encode()


def convert(*pages: bytes, **data: Any) -> Corpus:
    files = [
        InputFile(f"/exports/ops/search-{n:03d}.json", f"search-{n:03d}.json", p) for n, p in enumerate(pages)
    ]
    return jira_corpus(files, DataConfig(format="jira", tickets="/exports/ops", **data), "/exports/ops")


def sample_pages(folder: Path) -> list[dict[str, Any]]:
    return [json.loads((folder / f"search-{n:03d}.json").read_text()) for n in range(4)]


# ---------------------------------------------------------------- the sample


def test_the_sample_pages_become_exactly_the_sample(shared_jira_sample: Path, shared_sample: Path) -> None:
    corpus = jira_corpus(
        read_input_files(str(shared_jira_sample), StorageConfig(), ".json"),
        DataConfig(format="jira", tickets=str(shared_jira_sample)),
        str(shared_jira_sample),
    )
    rows = [json.loads(line) for line in (shared_sample / "tickets.jsonl").read_text().splitlines()]
    made = {
        t.id: {
            "id": t.id,
            "title": t.title,
            "description": t.description,
            "category": t.category,
            "project": t.project,
            "created": t.created,
        }
        for t in corpus.tickets.values()
    }
    assert len(made) == 333
    wrong = [(row["id"], key) for row in rows for key in row if made[row["id"]][key] != row[key]]
    assert not wrong, f"{len(wrong)} fields differ from data/sample, e.g. {wrong[:5]}"
    tickets, _ = parse_tickets((shared_sample / "tickets.jsonl").read_bytes(), "tickets.jsonl", DataConfig())
    assert corpus.tickets == tickets, "the text the model sees is the same too"
    links, _ = parse_links((shared_sample / "links.jsonl").read_bytes(), "links.jsonl", DataConfig(), tickets)
    assert len(corpus.links) == len(set(corpus.links)) == 158
    assert set(corpus.links) == set(links)
    assert [(r.rows, r.kept, r.skipped, r.duplicates_dropped) for r in corpus.reports] == [
        (333, 333, 0, 0),
        (158, 158, 0, 0),
    ]
    assert corpus.dropped == {
        OUTSIDE: 334,
        "link type Incorporates (data.jira.ignored_link_types)": 21,
        "link type Supercedes (data.jira.ignored_link_types)": 4,
        "link type Container (data.jira.ignored_link_types)": 1,
    }


def test_one_issue_per_file_gives_the_same_as_the_pages(shared_jira_sample: Path, tmp_path: Path) -> None:
    for body in sample_pages(shared_jira_sample):
        for item in body["issues"]:
            folder = tmp_path / "export" / item["key"].split("-")[0]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{item['key']}.json").write_text(json.dumps(item))
    (tmp_path / "export" / ".HDFS-1.json").write_text("not read: a hidden file")
    (tmp_path / "export" / "notes.txt").write_text("not read: not .json")
    from_files = convert_folder(tmp_path / "export")
    from_pages = convert_folder(shared_jira_sample)
    assert from_files.tickets == from_pages.tickets and set(from_files.links) == set(from_pages.links)


def convert_folder(folder: Path) -> Corpus:
    files = read_input_files(str(folder), StorageConfig(), ".json")
    return jira_corpus(files, DataConfig(format="jira", tickets=str(folder)), str(folder))


# ---------------------------------------------------------------- the rules, one at a time


def test_a_link_reads_from_outward_to_inward_whichever_issue_holds_it() -> None:
    corpus = convert(
        page(
            issue("OPS-1", link(1, "Duplicate", "inward", "OPS-2"), link(2, "Blocker", "outward", "OPS-3")),
            issue("OPS-2"),
            issue("OPS-3"),
        )
    )
    # "OPS-1 is duplicated by OPS-2" is OPS-2 duplicates OPS-1; "OPS-1 blocks OPS-3" stays as it is.
    assert corpus.links == [Link("OPS-2", "OPS-1", "duplicate"), Link("OPS-1", "OPS-3", "blocks")]


def test_a_link_listed_by_both_its_issues_is_one_link() -> None:
    corpus = convert(
        page(
            issue("OPS-1", link(7, "Blocker", "outward", "OPS-2")),
            issue("OPS-2", link(7, "Blocker", "inward", "OPS-1")),
        )
    )
    assert corpus.links == [Link("OPS-1", "OPS-2", "blocks")]
    assert corpus.reports[1].duplicates_dropped == 0 and REPEATED not in corpus.dropped


def test_an_unordered_relation_given_both_ways_is_kept_once_a_directed_one_twice() -> None:
    corpus = convert(
        page(
            issue("OPS-1", link(1, "Reference", "outward", "OPS-2"), link(3, "Blocker", "outward", "OPS-2")),
            issue("OPS-2", link(2, "Reference", "outward", "OPS-1"), link(4, "Blocker", "outward", "OPS-1")),
        )
    )
    assert sorted(corpus.links, key=str) == sorted(
        [
            Link("OPS-1", "OPS-2", "relates"),
            Link("OPS-1", "OPS-2", "blocks"),
            Link("OPS-2", "OPS-1", "blocks"),
        ],
        key=str,
    )
    assert corpus.reports[1].duplicates_dropped == 1 and corpus.dropped[REPEATED] == 1


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("line one\r\nline two", "line one\nline two"),
        ("a\x00b\x07c\x1bd\x7fe\x85f\rg", "abcdefg"),
        ("keep\ttab and  eight   spaces        x", "keep\ttab and  eight   spaces        x"),
        ("nine         spaces and\t\t\t\t\t\t\t\t\ttabs", "nine spaces and tabs"),
        ("para\n\npara", "para\n\npara"),
        ("para\n\n\n\npara", "para\n\npara"),
        ("code {\n\n \n       indented", "code {\n\nindented"),
        ("  \n *bold* {code}x{code}\n\n", "*bold* {code}x{code}"),
        ("x" * 4001, "x" * 4000),
        (None, ""),
    ],
)
def test_descriptions_are_cleaned_as_data_md_says(raw: str | None, clean: str) -> None:
    assert clean_description(raw) == clean


def test_titles_collapse_whitespace_and_dates_get_an_offset() -> None:
    assert clean_title(" Disk\tfull \n on  node ") == "Disk full on node"
    assert created_iso("2013-10-21T18:39:02.000+0000") == "2013-10-21T18:39:02+00:00"
    assert created_iso("2013-10-21T18:39:02.000-0530") == "2013-10-21T18:39:02-05:30"


@pytest.mark.parametrize(
    ("components", "labels", "category"),
    [
        (("hdfs-client", "namenode"), ("newbie",), "hdfs-client"),
        ((), ("newbie", "ha"), "newbie"),
        ((), (), None),
    ],
)
def test_category_is_the_first_component_else_the_first_label(
    components: tuple[str, ...], labels: tuple[str, ...], category: str | None
) -> None:
    corpus = convert(page(issue("OPS-1", components=components, labels=labels), issue("OPS-2")))
    assert corpus.tickets["OPS-1"].category == category


def test_links_outside_the_export_and_of_ignored_types_are_counted_not_kept() -> None:
    corpus = convert(
        page(
            issue(
                "OPS-1",
                link(1, "Duplicate", "outward", "OTHER-9"),
                link(2, "Incorporates", "outward", "OPS-2"),
                link(3, "Reference", "inward", "OPS-2"),
            ),
            issue("OPS-2"),
        )
    )
    assert corpus.links == [Link("OPS-2", "OPS-1", "relates")]
    assert corpus.dropped == {OUTSIDE: 1, "link type Incorporates (data.jira.ignored_link_types)": 1}


def test_a_tracker_with_its_own_link_names_maps_them_in_yaml(tmp_path: Path) -> None:
    """The README's example (and docs/configuration.md's), verbatim: a Jira Cloud site's own link types,
    which Apache's Jira names otherwise."""
    example = (
        "data:\n"
        "  format: jira\n"
        "  tickets: s3://tickets/jira/\n"
        "  jira: {link_types: {Blocks: {relation: blocks, outward: blocks}, "
        "Relates: {relation: relates, outward: relates to},\n"
        "                      Duplicate: {relation: duplicate, outward: duplicates}, "
        "Cloners: {relation: clones, outward: clones}}}\n"
    )
    for shown_in in (REPO / "README.md", REPO / "docs" / "configuration.md"):
        assert example in shown_in.read_text(), f"{shown_in.name} shows this config"
    config = tmp_path / "config.yaml"
    config.write_text(example)
    cfg = load_config(str(config), environ={}).config.data
    assert cfg.jira.link_types["Cloners"] == JiraLinkType(relation="clones", outward="clones")
    files = [
        InputFile(
            "/x/p.json",
            "p.json",
            page(
                issue(
                    "OPS-1",
                    link(1, "Blocks", "outward", "OPS-2", outward="blocks"),
                    link(2, "Cloners", "inward", "OPS-3", outward="clones"),
                    link(3, "Reference", "outward", "OPS-3"),
                ),
                issue("OPS-2"),
                issue("OPS-3"),
            ),
        )
    ]
    with pytest.raises(InputError, match="unknown link type 'Reference'"):
        jira_corpus(files, cfg, "/x/p.json")  # the default table is replaced, not merged
    corpus = jira_corpus(files, cfg.model_copy(update={"on_error": "skip"}), "/x/p.json")
    assert corpus.links == [Link("OPS-1", "OPS-2", "blocks"), Link("OPS-3", "OPS-1", "clones")]
    assert corpus.dropped == {"unknown link type Reference": 1}


# ---------------------------------------------------------------- bad exports


def _problems(corpus_or_error: Any) -> list[str]:
    return [str(p) for p in corpus_or_error.problems]


def test_an_unknown_link_type_names_file_issue_and_field_and_skip_counts_it() -> None:
    pages = [page(issue("OPS-1", link(1, "Causality", "outward", "OPS-2")), issue("OPS-2"))]
    with pytest.raises(InputError) as failed:
        convert(*pages)
    assert failed.value.exit_code == 2
    assert _problems(failed.value) == [
        "/exports/ops/search-000.json issue OPS-1: field 'fields.issuelinks[0].type.name': unknown link type "
        "'Causality' (outward 'x-es'): map it in data.jira.link_types or list it in "
        "data.jira.ignored_link_types"
    ]
    skipped = convert(*pages, on_error="skip")
    assert skipped.links == [] and len(skipped.tickets) == 2
    assert skipped.dropped == {"unknown link type Causality": 1} and skipped.reports[1].skipped == 1


def test_a_changed_outward_wording_is_refused_not_read_backwards() -> None:
    # Someone turned Duplicate round in Jira: its outward wording is now the inward one.
    pages = [
        page(
            issue("OPS-1", link(1, "Duplicate", "outward", "OPS-2", outward="is duplicated by")),
            issue("OPS-2", link(2, "Duplicate", "outward", "OPS-3", outward="Duplicates")),
            issue("OPS-3"),
        )
    ]
    with pytest.raises(InputError) as failed:
        convert(*pages)
    (problem,) = _problems(failed.value)
    assert problem.startswith(
        "/exports/ops/search-000.json issue OPS-1: field 'fields.issuelinks[0].type.outward': "
        "link type 'Duplicate' reads 'is duplicated by' outward, expected 'duplicates'"
    )
    skipped = convert(*pages, on_error="skip")
    assert skipped.links == [Link("OPS-2", "OPS-3", "duplicate")], "a change of case is the same wording"
    assert skipped.dropped == {"outward wording of Duplicate changed": 1}


def test_an_issue_without_a_key_is_named_by_its_place_and_skip_keeps_the_rest() -> None:
    keyless = issue("OPS-2")
    del keyless["key"]
    pages = [page(issue("OPS-1"), keyless, issue("OPS-3", summary="", description=None))]
    with pytest.raises(InputError) as failed:
        convert(*pages)
    problems = _problems(failed.value)
    assert problems[0].startswith(
        f"/exports/ops/search-000.json issue 2 (id {keyless['id']}): field 'key': is missing or empty"
    )
    assert problems[1].startswith(
        "/exports/ops/search-000.json issue OPS-3: field 'fields.summary': title and "
        "description are both empty"
    ), "data.py's checks, with Jira's field names"
    skipped = convert(*pages, on_error="skip")
    assert set(skipped.tickets) == {"OPS-1"} and skipped.reports[0].skipped == 2


def test_a_duplicate_issue_across_pages_names_where_it_was_first() -> None:
    with pytest.raises(InputError) as failed:
        convert(page(issue("OPS-1"), issue("OPS-2"), total=3), page(issue("OPS-2"), start_at=2, total=3))
    assert _problems(failed.value) == [
        "/exports/ops/search-001.json issue OPS-2: field 'key': duplicate id 'OPS-2' "
        "(first at search-000.json issue OPS-2): expected each id once"
    ]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            b'{"errorMessages": ["The value \'NOPE\' does not exist for the field \'project\'."], "errors": '
            b"{}}",
            "this is a Jira error response (The value 'NOPE' does not exist for the field 'project'.), "
            "not a search",
        ),
        (
            b'{"values": [], "isLast": true}',
            "a JSON object with keys isLast, values: expected a Jira search response",
        ),
        (b'[{"key": "OPS-1"}]', "a JSON list: expected a Jira search response"),
        (b"", "file is empty"),
        (b'{"startAt": 0, "maxRes', "invalid JSON at line 1 column"),
    ],
)
def test_a_file_that_is_not_a_search_response_stops_under_either_policy(body: bytes, says: str) -> None:
    for policy in ("fail", "skip"):  # its issues cannot be counted, so skipping would lose them uncounted
        with pytest.raises(InputError, match="unusable as a whole") as failed:
            convert(page(issue("OPS-1")), body, on_error=policy)
        problem = _problems(failed.value)[0]
        assert problem.startswith("/exports/ops/search-001.json: ") and says in problem


def test_a_cut_page_names_the_last_whole_issue_and_skip_counts_the_lost_ones(
    shared_jira_sample: Path,
) -> None:
    whole = (shared_jira_sample / "search-001.json").read_bytes()
    cut = whole[: len(whole) // 2]
    kept = json.loads(_whole_issues_of(cut))
    pages = [(shared_jira_sample / f"search-{n:03d}.json").read_bytes() for n in range(4)]
    pages[1] = cut
    with pytest.raises(InputError) as failed:
        convert(*pages)
    problem = next(p for p in _problems(failed.value) if "search-001.json" in p and "cut" in p)
    assert f"the file ends early after issue {kept[-1]['key']}" in problem
    lost = 100 - len(kept)
    assert f"issues {101 + len(kept)}-200 of the search's 333 are lost: export again" in problem
    skipped = convert(*pages, on_error="skip")
    assert len(skipped.tickets) == 333 - lost and skipped.reports[0].skipped == lost
    assert skipped.reports[0].rows == 333


def _whole_issues_of(cut: bytes) -> str:
    """The issues a cut page still holds whole, as a JSON array (found independently of job/data/jira.py)."""
    text = cut.decode("utf-8", errors="ignore")
    decoder, issues, at = json.JSONDecoder(), [], text.index('"issues": [') + len('"issues": [')
    while True:
        try:
            item, at = decoder.raw_decode(text, text.index("{", at))
        except (ValueError, json.JSONDecodeError):
            return json.dumps(issues)
        issues.append(item)


def test_a_missing_page_is_found_from_the_others_and_counted(shared_jira_sample: Path) -> None:
    pages = [(shared_jira_sample / f"search-{n:03d}.json").read_bytes() for n in (0, 1, 3)]
    with pytest.raises(InputError) as failed:
        convert(*pages)
    assert _problems(failed.value) == [
        "/exports/ops/search-001.json: issues 201-300 of the search's 333 are in no "
        "page (after this one): a page is missing or short"
    ]
    skipped = convert(*pages, on_error="skip")
    assert len(skipped.tickets) == 233 and skipped.reports[0].skipped == 100
    with pytest.raises(InputError, match="issues 1-100 of the search's 333 are in no page: the first page"):
        convert(*[(shared_jira_sample / f"search-{n:03d}.json").read_bytes() for n in (1, 2, 3)])


def test_an_export_is_checksummed_by_its_files_not_where_it_lies() -> None:
    one = [
        InputFile("/a/search-000.json", "search-000.json", b"{}"),
        InputFile("/a/x/y.json", "x/y.json", b"[]"),
    ]
    moved = [InputFile(f"s3://b/in/{f.name}", f.name, f.data) for f in reversed(one)]
    assert export_checksum(one) == export_checksum(moved)
    assert export_checksum(one) != export_checksum([one[0], InputFile("/a/x/y.json", "x/y.json", b"[1]")])


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"links": "/data/links.jsonl"}, "format jira makes the links from the export's issuelinks"),
        (
            {"jira": {"link_types": {"Duplicate": {"relation": "dupe", "outward": "duplicates"}}}},
            "relation 'dupe' is not one of data.relations",
        ),
        ({"jira": {"ignored_link_types": ["Duplicate"]}}, "both mapped (link_types) and ignored"),
    ],
)
def test_config_refuses_a_jira_setting_that_cannot_work(
    tmp_path: Path, settings: dict[str, Any], says: str
) -> None:
    config = write_config(
        tmp_path / "c.json", {"data": {"format": "jira", "tickets": "/data/jira", **settings}}
    )
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(str(config), environ={})


def test_the_output_may_not_be_inside_the_export_folder(tmp_path: Path) -> None:
    inside = write_config(
        tmp_path / "c.json",
        {
            "data": {"format": "jira", "tickets": str(tmp_path / "jira")},
            "output": {"uri": str(tmp_path / "jira" / "runs")},
        },
    )
    with pytest.raises(ConfigError, match="is inside the folder of data.tickets"):
        load_config(str(inside), environ={})
    beside = write_config(
        tmp_path / "c.json",
        {
            "data": {"format": "jira", "tickets": str(tmp_path / "jira")},
            "output": {"uri": str(tmp_path / "runs")},
        },
    )
    assert load_config(str(beside), environ={}).config.output.uri == str(tmp_path / "runs")


# ---------------------------------------------------------------- the job, from the pages


def _prepare_config(tmp_path: Path, tickets: str, output: str, **data: Any) -> Path:
    return write_config(
        tmp_path / "config.json",
        {
            "data": {"format": "jira", "tickets": tickets, **data},
            "output": {"uri": output},
            "pairs": {"mine_hard_negatives": False},
            "runtime": {"work_dir": str(tmp_path / "work")},
        },
    )


def test_validate_data_shows_what_the_export_became(shared_jira_sample: Path, tmp_path: Path) -> None:
    config = _prepare_config(tmp_path, str(shared_jira_sample), str(tmp_path / "runs"))
    result = run_cli("validate-data", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert f"{shared_jira_sample}: 333 rows, 333 kept, 0 bad" in out
    assert f"{shared_jira_sample} (issuelinks): 158 rows, 158 kept, 0 bad" in out
    assert "links per relation: relates 44, duplicate 35, causes 23, blocks 21, depends 20, clones 15" in out
    assert "links not kept: 334 the other issue is not in the export; 21 link type Incorporates" in out
    assert "inputs OK" in out


def test_a_bad_export_exits_2_naming_file_and_issue_and_skip_counts_instead(
    shared_jira_sample: Path, tmp_path: Path
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    bodies = sample_pages(shared_jira_sample)
    in_export = {item["key"] for body in bodies for item in body["issues"]}
    holders = [
        (n, item["key"], entry)
        for n, body in enumerate(bodies)
        for item in body["issues"]
        for entry in item["fields"]["issuelinks"]
        if entry["type"]["name"] == "Reference"
        and (entry.get("outwardIssue") or entry.get("inwardIssue"))["key"] in in_export
    ]
    renamed = holders[0][2]["id"]
    for _, _, entry in holders:
        if entry["id"] == renamed:
            entry["type"] = {**entry["type"], "name": "Relates"}  # renamed in Jira: both issues list it so
    for n, body in enumerate(bodies):
        (export / f"search-{n:03d}.json").write_text(json.dumps(body))
    page_number, key, _ = holders[0]
    config = _prepare_config(tmp_path, str(export), str(tmp_path / "runs"))
    failed = run_cli("prepare", "--config", str(config), "--run-id", "r1")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert f"{export}/search-{page_number:03d}.json issue {key}: field 'fields.issuelinks[" in failed.stderr
    assert "unknown link type 'Relates'" in failed.stderr
    skipped = run_cli("validate-data", "--config", str(config), "--set", "data.on_error=skip")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert f"{export} (issuelinks): 158 rows, 157 kept, 1 bad" in skipped.stdout
    assert "1 unknown link type Relates" in skipped.stdout and "1 bad rows will be skipped" in skipped.stdout


def test_prepare_reads_the_pages_locally_and_records_them(shared_jira_sample: Path, tmp_path: Path) -> None:
    config = _prepare_config(tmp_path, str(shared_jira_sample), str(tmp_path / "runs"))
    result = run_cli("prepare", "--config", str(config), "--run-id", "jira")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "jira"
    assert len((run / "prepared/tickets.jsonl").read_text().splitlines()) == 333
    assert len((run / "prepared/links.jsonl").read_text().splitlines()) == 158
    record = json.loads((run / "steps/prepare.json").read_text())
    files = read_input_files(str(shared_jira_sample), StorageConfig(), ".json")
    assert record["fingerprint"]["inputs_sha256"] == {"data.tickets": export_checksum(files)}
    assert record["info"]["inputs"]["dropped"][OUTSIDE] == 334, "what was left out is in the run's record"


def test_prepare_reads_the_pages_from_an_s3_prefix(
    shared_jira_sample: Path, s3: Any, bucket: str, tmp_path: Path
) -> None:
    client = s3.client()
    for path in sorted(shared_jira_sample.glob("search-*.json")):
        client.upload_file(str(path), bucket, f"in/jira/{path.name}")
    client.put_object(Bucket=bucket, Key="in/jira-old/search-000.json", Body=b"not read: another prefix")
    config = _prepare_config(tmp_path, f"s3://{bucket}/in/jira/", f"s3://{bucket}/runs")
    checked = run_cli("validate-data", "--config", str(config), env=s3.env())
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert f"s3://{bucket}/in/jira/: 333 rows, 333 kept, 0 bad" in checked.stdout
    result = run_cli("prepare", "--config", str(config), "--run-id", "jira", env=s3.env())
    assert result.returncode == 0, result.stderr[-3000:]
    links = client.get_object(Bucket=bucket, Key="runs/jira/prepared/links.jsonl")["Body"].read()
    assert len(links.splitlines()) == 158
    record = json.loads(client.get_object(Bucket=bucket, Key="runs/jira/steps/prepare.json")["Body"].read())
    local = read_input_files(str(shared_jira_sample), StorageConfig(), ".json")
    assert record["fingerprint"]["inputs_sha256"] == {"data.tickets": export_checksum(local)}, (
        "same pages, same sum"
    )


@pytest.mark.slow
def test_the_job_runs_end_to_end_from_the_pages(shared_jira_sample: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.json",
        merged(
            TINY,
            {
                "data": {"format": "jira", "tickets": str(shared_jira_sample)},
                "output": {"uri": str(tmp_path / "runs")},
                "runtime": {"work_dir": str(tmp_path / "work")},
            },
        ),
    )
    result = run_cli("run", "--config", str(config), "--run-id", "from-jira")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "from-jira"
    assert (run / "manifest.json").exists() and (run / "model" / "model.safetensors").exists()
    meta = json.loads((run / "training_metadata.json").read_text())
    assert (meta["inputs"]["tickets"], meta["inputs"]["links"]) == (333, 158)
    assert [f["uri"] for f in meta["inputs"]["files"]] == [
        str(shared_jira_sample),
        f"{shared_jira_sample} (issuelinks)",
    ]
