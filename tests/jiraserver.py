"""A loopback Jira that serves the recorded search pages (../shared/data/jira-sample), with faults on demand.

    with JiraServer(pages_dir, token="t0ken") as jira:
        jira.add(Fault("429", start_at=100))
        ... finetune-job export-jira --url jira.url ...

GET /rest/api/2/search?startAt=S&maxResults=M answers with the recorded issues S..S+M as a search response;
for M = 100 at a recorded page's startAt it answers that page's bytes exactly. Requests without
`Authorization: Bearer <token>` (or Basic with `user`) get 401 as Jira words it. A fault applies to the
first `times` requests at its startAt (None: any), then the server answers normally. Kinds:

    429     Too Many Requests with Retry-After: `retry_after`
    503     Service Unavailable
    401     the credentials refused, whatever was sent
    cut     the page's Content-Length, half its body, then the connection closed
    echo    a 200 page whose body holds the request's Authorization header (a misbehaving proxy)

Listens on 127.0.0.1 only; every request is recorded (startAt, maxResults, jql, fields, whether it was
authorised, when).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

FaultKind = Literal["429", "503", "401", "cut", "echo"]
UNAUTHORISED = b'{"errorMessages":["You do not have the permission to see the specified issue."],"errors":{}}'


@dataclass
class Fault:
    kind: FaultKind
    start_at: int | None = None
    times: int = 1
    retry_after: str = "1"
    hits: int = 0


@dataclass
class Request:
    start_at: int
    max_results: int
    jql: str
    fields: str
    authorised: bool
    at: float


@dataclass
class JiraServer:
    pages_dir: Path
    token: str
    user: str | None = None
    faults: list[Fault] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.recorded: dict[int, bytes] = {}
        self.issues: list[Any] = []
        for path in sorted(self.pages_dir.glob("search-*.json")):
            raw = path.read_bytes()
            body = json.loads(raw)
            self.recorded[body["startAt"]] = raw
            self.issues += body["issues"]
        self.lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def __enter__(self) -> JiraServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _authorised(self, header: str | None) -> bool:
        if self.user:
            expected = base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
            return header == f"Basic {expected}"
        return header == f"Bearer {self.token}"

    def _fault(self, start_at: int) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.hits < fault.times and fault.start_at in (None, start_at):
                    fault.hits += 1
                    return fault
        return None

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        start_at, max_results = int(query.get("startAt", 0)), int(query.get("maxResults", 50))
        authorised = self._authorised(handler.headers.get("Authorization"))
        with self.lock:
            self.requests.append(
                Request(
                    start_at,
                    max_results,
                    query.get("jql", ""),
                    query.get("fields", ""),
                    authorised,
                    time.monotonic(),
                )
            )
        if url.path != "/rest/api/2/search":
            return self._send(handler, 404, b'{"errorMessages":["not found"]}')
        fault = self._fault(start_at)
        if fault is None and not authorised:
            return self._send(handler, 401, UNAUTHORISED)
        body = self.page(start_at, max_results)
        if fault is None:
            return self._send(handler, 200, body)
        if fault.kind == "429":
            return self._send(
                handler,
                429,
                b'{"errorMessages":["Rate limit exceeded."]}',
                {"Retry-After": fault.retry_after},
            )
        if fault.kind == "503":
            return self._send(
                handler, 503, b"<html>Service Unavailable</html>", {"Content-Type": "text/html"}
            )
        if fault.kind == "401":
            return self._send(handler, 401, UNAUTHORISED)
        if fault.kind == "echo":
            echoed = json.loads(body)
            echoed["expand"] = f"request was: {handler.headers.get('Authorization')}"
            return self._send(handler, 200, json.dumps(echoed).encode())
        # cut: promise the whole page, send half of it, hang up
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json;charset=UTF-8")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[: len(body) // 2])
        handler.wfile.flush()
        handler.close_connection = True
        return None

    def page(self, start_at: int, max_results: int) -> bytes:
        if max_results == 100 and start_at in self.recorded:
            return self.recorded[start_at]
        issues = self.issues[start_at : start_at + max_results]
        return json.dumps(
            {
                "expand": "schema,names",
                "startAt": start_at,
                "maxResults": max_results,
                "total": len(self.issues),
                "issues": issues,
            }
        ).encode()

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        handler.send_response(status)
        for name, value in {"Content-Type": "application/json;charset=UTF-8", **(headers or {})}.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
