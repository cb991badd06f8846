"""`finetune-job export-jira`: page through a live Jira's REST search API, write the pages where the job
reads them.

Each page is written exactly as Jira returned it (`search-000.json`, `search-001.json`, ...) under
data.tickets, which `data.format: jira` then reads (job/data/jira.py), so a scheduled run can pull its tickets
itself as a first step. Pages of an earlier, longer export in the same folder are removed afterwards.

429 and 5xx answers, timeouts, dropped connections and cut or garbled responses are retried with backoff
(a Retry-After is honoured up to jira_api.max_retry_wait_s); after jira_api.max_attempts tries the export
stops with exit 75 (transient: Argo retries it). Refused credentials (401, 403), a refused search (400) and
a redirect stop it at once with exit 2. The token is sent only in the Authorization header, to the
configured host only (redirects are not followed), and never logged; a page that would carry it is not
written.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import random
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from job.config import JiraApiConfig, JobConfig
from job.data.jira import SEARCH_FIELDS
from job.errors import ConfigError, StorageError
from job.storage import Store, open_store

SEARCH_PATH = "/rest/api/2/search"
PAGE_NAME = re.compile(r"search-\d+\.json")
MAX_ERROR_BODY = 65536  # of a refused search's answer, read for Jira's message


@dataclass(frozen=True)
class ExportedPages:
    """What an export wrote: where, how many pages and issues, of how many the search found."""

    uri: str
    pages: int
    issues: int
    total: int
    removed: int  # pages of an earlier export that this one did not write


class _Retry(Exception):
    """A failure worth another try; `wait` is what the server asked for (Retry-After), if it did."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the Authorization header to wherever it points: refuse it instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class JiraSearch:
    """The pages of one JQL search, fetched with retries."""

    def __init__(self, api: JiraApiConfig, log: Any) -> None:
        if not api.url or not api.jql:
            missing = " and ".join(
                n for n, v in (("jira_api.url (--url)", api.url), ("jira_api.jql (--jql)", api.jql)) if not v
            )
            raise ConfigError(f"export-jira needs {missing}")
        self.api, self.log = api, log
        self.host = urlsplit(api.url).netloc
        self.opener = urllib.request.build_opener(_NoRedirects)

    def page(self, start_at: int) -> tuple[bytes, dict[str, Any]]:
        """The raw answer for the page at `start_at`, and its parsed body."""
        where = f"Jira {self.host}{SEARCH_PATH} (startAt {start_at})"
        for attempt in range(1, self.api.max_attempts + 1):
            try:
                raw = self._get(start_at, where)
                return raw, _search_body(raw, where)
            except _Retry as exc:
                if attempt == self.api.max_attempts:
                    raise StorageError(f"{exc}; gave up after {attempt} attempt(s)", transient=True) from None
                wait = exc.wait if exc.wait is not None else _backoff(attempt)
                if wait > self.api.max_retry_wait_s:
                    raise StorageError(
                        f"{exc}; Jira asks to wait {wait:.0f} s, more than jira_api.max_retry_wait_s "
                        f"({self.api.max_retry_wait_s:g} s)",
                        transient=True,
                    ) from None
                self.log.warning("jira retry", error=str(exc), attempt=attempt, wait_s=round(wait, 2))
                time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _get(self, start_at: int, where: str) -> bytes:
        query = urlencode(
            {
                "jql": self.api.jql,
                "startAt": start_at,
                "maxResults": self.api.page_size,
                "fields": ",".join(SEARCH_FIELDS),
            }
        )
        request = urllib.request.Request(f"{self.api.url}{SEARCH_PATH}?{query}", headers=self._headers())
        try:
            with self.opener.open(request, timeout=self.api.timeout_s) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, where, self.api.token_env, token_sent=self.api.token is not None) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise _Retry(f"{where}: {type(exc).__name__}: {str(reason)[:200]}") from None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "finetune-job"}
        token = self.api.token.get_secret_value() if self.api.token else None
        if token and self.api.user:
            basic = base64.b64encode(f"{self.api.user}:{token}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        return headers


def _http_error(exc: urllib.error.HTTPError, where: str, token_env: str, token_sent: bool) -> Exception:
    status = exc.code
    if status == 429 or status >= 500:
        return _Retry(f"{where}: HTTP {status}", _retry_after(exc.headers.get("Retry-After")))
    if status in (401, 403):
        hint = (
            f"check the token in ${token_env} (jira_api.token_env)"
            if token_sent
            else f"no token was sent: set ${token_env} (jira_api.token_env)"
        )
        return StorageError(f"{where}: Jira refused the credentials (HTTP {status}); {hint}", transient=False)
    if 300 <= status < 400:
        target = urlsplit(exc.headers.get("Location") or "").netloc or "another address"
        return StorageError(
            f"{where}: Jira redirects to {target} (HTTP {status}); redirects are not followed, so "
            "the token goes nowhere else: set jira_api.url to the address it redirects to",
            transient=False,
        )
    if status == 400:
        return ConfigError(f"{where}: Jira refused the search (HTTP 400): {_jira_messages(exc)}")
    return StorageError(f"{where}: HTTP {status}", transient=False)


def _jira_messages(exc: urllib.error.HTTPError) -> str:
    """Jira's own words on a refused search (errorMessages, errors), clipped."""
    try:
        body = json.loads(exc.read(MAX_ERROR_BODY))
    except (ValueError, OSError, http.client.HTTPException):
        return "no reason given"
    if not isinstance(body, dict):
        return "no reason given"
    said = [str(m) for m in body.get("errorMessages") or [] if m]
    said += (
        [f"{k}: {v}" for k, v in (body.get("errors") or {}).items()]
        if isinstance(body.get("errors"), dict)
        else []
    )
    return "; ".join(s[:300] for s in said[:5]) or "no reason given"


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (only the delta-seconds form; an HTTP date falls back to backoff)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _backoff(attempt: int) -> float:
    """Seconds before retry `attempt` (1-based): exponential with jitter, at most 30 s."""
    return float(min(30.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))


def _search_body(raw: bytes, where: str) -> dict[str, Any]:
    """The page as a search response; anything else came through broken (or from a proxy) and is retried."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise _Retry(f"{where}: the answer is not whole JSON ({len(raw)} bytes)") from None
    if not (
        isinstance(body, dict) and isinstance(body.get("issues"), list) and isinstance(body.get("total"), int)
    ):
        raise _Retry(f"{where}: the answer is not a search response")
    return body


def export_jira(cfg: JobConfig, log: Any) -> ExportedPages:
    """Write every page of jira_api.jql's search under data.tickets; see the module docstring."""
    destination = cfg.data.tickets
    if cfg.data.format != "jira" or not destination:
        raise ConfigError(
            "export-jira writes a Jira export to data.tickets, which the job reads with data.format: "
            "jira; set both"
        )
    if destination.lower().endswith(".json"):
        raise ConfigError(
            "export-jira writes a folder of pages: data.tickets must name a folder or S3 prefix, "
            "not a .json file"
        )
    search = JiraSearch(cfg.jira_api, log)
    token = cfg.jira_api.token.get_secret_value().encode() if cfg.jira_api.token else None
    store = open_store(destination, cfg.storage)
    written: list[str] = []
    start_at, issues, total, width = 0, 0, 0, 3
    while True:
        raw, body = search.page(start_at)
        count, total = len(body["issues"]), body["total"]
        if not written:  # names sort in page order: as many digits as the page count needs
            width = max(3, len(str(max(0, math.ceil(total / max(count, 1)) - 1))))
        if token and token in raw:
            raise StorageError(
                f"the answer for startAt {start_at} holds the token itself (a proxy echoing the "
                "request?); nothing of it was written",
                transient=False,
            )
        name = f"search-{len(written):0{width}d}.json"
        store.write_bytes(name, raw)
        written.append(name)
        issues, start_at = issues + count, start_at + count
        log.info("jira page", page=name, issues=count, done=start_at, total=total)
        if start_at >= total:
            break
        if count == 0:
            raise StorageError(
                f"Jira returned no issues at startAt {start_at} of its total {total}: the search's "
                "results changed during the export; run it again",
                transient=True,
            )
    removed = _remove_stale_pages(store, set(written))
    return ExportedPages(destination, len(written), issues, total, removed)


def _remove_stale_pages(store: Store, written: set[str]) -> int:
    """Pages of an earlier export (search-NNN.json) at the top of the folder that this export did not
    write."""
    stale = [
        key
        for key, _ in store.list_keys()
        if "/" not in key and PAGE_NAME.fullmatch(key) and key not in written
    ]
    for key in stale:
        store.delete(key)
    return len(stale)
