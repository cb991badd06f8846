"""`finetune-job export-jira` (job/data/jira_export.py) against a loopback Jira serving the recorded pages.

Paging, a 429 with Retry-After, a cut response, an outage longer than the retries (exit 75), refused
credentials (exit 2 at once), and the token: in no byte the command prints or writes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from job.config import DataConfig, StorageConfig
from job.data.jira import SEARCH_FIELDS, jira_corpus
from job.storage import read_input_files
from tests.conftest import run_cli, write_config
from tests.jiraserver import Fault, JiraServer

TOKEN = "jira-sentinel-5c1e9a7b0d"  # a test-only token: every output is searched for it
JQL = "project in (HADOOP, HDFS, MAPREDUCE, YARN) ORDER BY key"


@pytest.fixture
def jira(shared_jira_sample: Path) -> Iterator[JiraServer]:
    with JiraServer(shared_jira_sample, TOKEN) as server:
        yield server


def _config(tmp_path: Path, tickets: str | None = None, **jira_api: Any) -> Path:
    return write_config(
        tmp_path / "config.json",
        {
            "data": {"format": "jira", "tickets": tickets or str(tmp_path / "in" / "jira")},
            "output": {"uri": str(tmp_path / "runs")},
            "runtime": {"work_dir": str(tmp_path / "work")},
            "jira_api": {"max_attempts": 3, **jira_api},
        },
    )


def _export(
    tmp_path: Path,
    jira: JiraServer,
    *args: str,
    token: str | None = TOKEN,
    env: dict[str, str] | None = None,
    **jira_api: Any,
) -> Any:
    config = _config(tmp_path, **jira_api)
    token_env = {"JIRA_TOKEN": token} if token else {}
    return run_cli(
        "export-jira",
        "--config",
        str(config),
        "--url",
        jira.url,
        "--jql",
        JQL,
        *args,
        env={**token_env, **(env or {})},
    )


def _no_token_anywhere(result: Any, *folders: Path, secrets: tuple[str, ...] = (TOKEN,)) -> None:
    for secret in secrets:
        assert secret not in result.stdout + result.stderr
        for folder in folders:
            leaked = [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
            assert not leaked, f"{secret!r} written to {leaked}"


def test_export_pages_the_search_and_writes_jira_s_own_bytes(
    jira: JiraServer, shared_jira_sample: Path, tmp_path: Path
) -> None:
    result = _export(tmp_path, jira)
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted((tmp_path / "in" / "jira").iterdir())
    assert [p.name for p in written] == [f"search-00{n}.json" for n in range(4)]
    for path in written:
        assert path.read_bytes() == (shared_jira_sample / path.name).read_bytes(), path.name
    pages = [(0, 100), (100, 100), (200, 100), (300, 100)]
    assert [(r.start_at, r.max_results) for r in jira.requests] == pages
    assert all(r.authorised and r.jql == JQL and r.fields == ",".join(SEARCH_FIELDS) for r in jira.requests)
    assert f"wrote 4 page(s), 333 of the search's 333 issues, to {tmp_path / 'in' / 'jira'}" in result.stderr
    _no_token_anywhere(result, tmp_path)
    # ... and the job reads what it wrote.
    checked = run_cli("validate-data", "--config", str(tmp_path / "config.json"))
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert f"{tmp_path / 'in' / 'jira'} (issuelinks): 158 rows, 158 kept, 0 bad" in checked.stdout


def test_another_page_size_reads_back_the_same_and_an_earlier_export_s_pages_go(
    jira: JiraServer, shared_jira_sample: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in" / "jira"
    folder.mkdir(parents=True)
    for stale in ("search-006.json", "search-007.json"):
        (folder / stale).write_text('{"startAt": 600, "total": 900, "issues": []}')
    (folder / "notes.md").write_text("not a page: kept")
    result = _export(tmp_path, jira, page_size=64)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == ["notes.md", *[f"search-00{n}.json" for n in range(6)]]
    assert "removed 2 page(s) of an earlier export" in result.stderr
    exported = jira_corpus(
        read_input_files(str(folder), StorageConfig(), ".json"), DataConfig(format="jira"), "e"
    )
    recorded = jira_corpus(
        read_input_files(str(shared_jira_sample), StorageConfig(), ".json"), DataConfig(format="jira"), "r"
    )
    assert exported.tickets == recorded.tickets and exported.links == recorded.links


def test_a_429_is_waited_out_as_long_as_jira_asks(jira: JiraServer, tmp_path: Path) -> None:
    jira.add(Fault("429", start_at=100, retry_after="1"))
    result = _export(tmp_path, jira)
    assert result.returncode == 0, result.stderr[-3000:]
    second = [r for r in jira.requests if r.start_at == 100]
    assert len(second) == 2 and second[1].at - second[0].at >= 1.0
    retried = [json.loads(line) for line in result.stdout.splitlines() if '"jira retry"' in line]
    assert retried and "HTTP 429" in retried[0]["error"] and retried[0]["wait_s"] == 1.0


def test_a_cut_response_is_fetched_again(jira: JiraServer, shared_jira_sample: Path, tmp_path: Path) -> None:
    jira.add(Fault("cut", start_at=200))
    result = _export(tmp_path, jira)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len([r for r in jira.requests if r.start_at == 200]) == 2
    page = "search-002.json"
    assert (tmp_path / "in/jira" / page).read_bytes() == (shared_jira_sample / page).read_bytes()


def test_an_outage_longer_than_the_retries_exits_75(jira: JiraServer, tmp_path: Path) -> None:
    jira.add(Fault("503", times=100))
    result = _export(tmp_path, jira, max_attempts=2)
    assert result.returncode == 75, result.stderr[-3000:]
    assert "HTTP 503; gave up after 2 attempt(s)" in result.stderr and "Traceback" not in result.stderr
    assert len(jira.requests) == 2 and not (tmp_path / "in").exists()
    _no_token_anywhere(result, tmp_path)


def test_a_retry_after_longer_than_allowed_stops_with_75(jira: JiraServer, tmp_path: Path) -> None:
    jira.add(Fault("429", retry_after="3600"))
    result = _export(tmp_path, jira, max_retry_wait_s=5)
    assert result.returncode == 75, result.stderr[-3000:]
    assert "Jira asks to wait 3600 s, more than jira_api.max_retry_wait_s (5 s)" in result.stderr


@pytest.mark.parametrize(
    ("token", "says"),
    [
        (
            "wrong-sentinel-0e8f3b27aa",
            "Jira refused the credentials (HTTP 401); check the token in $JIRA_TOKEN",
        ),
        (None, "Jira refused the credentials (HTTP 401); no token was sent: set $JIRA_TOKEN"),
    ],
)
def test_refused_credentials_exit_2_at_once(
    jira: JiraServer, tmp_path: Path, token: str | None, says: str
) -> None:
    result = _export(tmp_path, jira, token=token)
    assert result.returncode == 2, result.stderr[-3000:]
    assert says in result.stderr and len(jira.requests) == 1, "a 401 is not retried"
    _no_token_anywhere(result, tmp_path, secrets=(TOKEN, token or TOKEN))


def test_basic_auth_when_a_user_is_set(shared_jira_sample: Path, tmp_path: Path) -> None:
    with JiraServer(shared_jira_sample, TOKEN, user="bot@example.com") as jira:
        result = _export(tmp_path, jira, user="bot@example.com")
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(r.authorised for r in jira.requests)
    basic = base64.b64encode(f"bot@example.com:{TOKEN}".encode()).decode()
    _no_token_anywhere(result, tmp_path, secrets=(TOKEN, basic))


def test_no_byte_written_or_printed_holds_the_token(jira: JiraServer, tmp_path: Path) -> None:
    jira.add(Fault("echo", start_at=100))  # a proxy that puts the request's Authorization into the page
    result = _export(tmp_path, jira)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "the answer for startAt 100 holds the token itself" in result.stderr
    assert sorted(p.name for p in (tmp_path / "in" / "jira").iterdir()) == ["search-000.json"]
    _no_token_anywhere(result, tmp_path)
    shown = run_cli("config", "--config", str(tmp_path / "config.json"), "--json", env={"JIRA_TOKEN": TOKEN})
    assert shown.returncode == 0 and TOKEN not in shown.stdout + shown.stderr
    assert json.loads(shown.stdout)["jira_api.token"] == {"value": "***", "source": "env JIRA_TOKEN"}


@pytest.mark.parametrize(
    ("url", "settings", "says"),
    [
        ("http://127.0.0.1:9", {"tickets": None}, "export-jira writes a Jira export to data.tickets"),
        ("http://127.0.0.1:9", {"format": "jsonl"}, "export-jira writes a Jira export to data.tickets"),
        (
            "http://127.0.0.1:9",
            {"tickets": "/in/page.json"},
            "must name a folder or S3 prefix, not a .json file",
        ),
        (
            "https://bot:pass-sentinel-77a1@jira.example.com",
            {},
            "jira_api.url (from cli): Value error, holds credentials; they are not sent",
        ),
        ("jira.example.com", {}, "expected an http:// or https:// URL"),
        (None, {}, "export-jira needs jira_api.url (--url)"),
    ],
)
def test_settings_that_cannot_export_exit_2(
    tmp_path: Path, url: str | None, settings: dict[str, Any], says: str
) -> None:
    config = json.loads(_config(tmp_path).read_text())
    config["data"] = {k: v for k, v in {**config["data"], **settings}.items() if v is not None}
    write_config(tmp_path / "config.json", config)
    result = run_cli(
        "export-jira",
        "--config",
        str(tmp_path / "config.json"),
        "--jql",
        JQL,
        *(["--url", url] if url is not None else []),
        env={"JIRA_TOKEN": TOKEN},
    )
    assert result.returncode == 2 and says in result.stderr, result.stderr[-2000:]
    assert "pass-sentinel-77a1" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    _no_token_anywhere(result, tmp_path)


def test_export_to_an_s3_prefix_then_read_from_it(
    jira: JiraServer, s3: Any, bucket: str, tmp_path: Path
) -> None:
    config = _config(tmp_path, tickets=f"s3://{bucket}/in/jira/")
    result = run_cli(
        "export-jira",
        "--config",
        str(config),
        "--url",
        jira.url,
        "--jql",
        JQL,
        env={"JIRA_TOKEN": TOKEN, **s3.env()},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix="in/jira/")["Contents"]]
    assert keys == [f"in/jira/search-00{n}.json" for n in range(4)]
    checked = run_cli("validate-data", "--config", str(config), env=s3.env())
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert f"s3://{bucket}/in/jira/ (issuelinks): 158 rows, 158 kept, 0 bad" in checked.stdout
