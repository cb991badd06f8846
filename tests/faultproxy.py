"""A fault-injecting HTTP proxy for S3 tests: boto3 talks to it, it forwards to the real server.

    with FaultProxy(s3.endpoint) as proxy:
        proxy.add(Fault("slowdown", method="GET", key="tickets.jsonl", times=2))
        client = ...endpoint_url=proxy.endpoint...

A fault applies to the first `times` requests that match it (method, and a substring of the
URL-decoded path and query), then the proxy passes requests through unchanged. Kinds:

    refuse          reset the connection as soon as it is accepted, before a byte is read
                    (matches connections, so method and key are ignored)
    reset           reset mid-transfer: a request with a body is cut after half of it (S3
                    never sees it); otherwise the response is cut after half of its body
    drop_response   forward the request, then reset before answering: S3 did the work, the
                    client cannot know
    error500        answer 500 InternalError (an S3 XML error body), do not forward
    slowdown        answer 503 SlowDown, do not forward
    latency         wait `seconds`, then forward
    cut             forward; send the response's Content-Length but only half the body, then
                    close the connection cleanly
    truncate        forward; send half the body with a Content-Length that matches it, as if
                    the object were shorter (only a checksum can tell)
    corrupt         forward with one byte of the request body (PUT) or response body (GET) flipped

The proxy listens on 127.0.0.1 only, forwards only to its one upstream, and is bounded: every
socket has a timeout, a connection serves at most MAX_REQUESTS requests, and the server stops
by itself after `lifetime_s` seconds if the test forgets to.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

FaultKind = Literal[
    "refuse", "reset", "drop_response", "error500", "slowdown", "latency", "cut", "truncate", "corrupt"
]
MAX_REQUESTS = 10_000  # per connection
MAX_HEADER_LINES = 200
SOCKET_TIMEOUT_S = 30.0
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "expect",
}


@dataclass
class Fault:
    kind: FaultKind
    method: str | None = None  # None: any method
    key: str = ""  # substring of the URL-decoded path and query
    times: int = 1
    seconds: float = 0.0  # latency only
    hits: int = 0

    def matches(self, method: str, target: str) -> bool:
        return (
            self.hits < self.times
            and (self.method is None or self.method == method)
            and self.key in unquote(target)
        )


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it, and what it did to it."""

    method: str
    target: str
    fault: str | None
    status: int | None


@dataclass
class _Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    expect_continue: bool = False

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


class _ClientGone(Exception):
    """The client closed or broke the connection; nothing more to do on it."""


@dataclass
class FaultProxy:
    upstream: str  # http://127.0.0.1:PORT of the real S3 server
    lifetime_s: float = 600.0
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy forwards to loopback only, not {self.upstream}")
        self._upstream = (parts.hostname, parts.port or 80)
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- control

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.seen.clear()

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        server.daemon_threads = True
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        self._server = server
        serve = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name="faultproxy"
        )
        serve.start()
        # Bounded: the server stops by itself even if stop() is never called.
        timer = threading.Timer(self.lifetime_s, self.stop)
        timer.daemon = True
        timer.start()
        self._threads = [serve, timer]
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            if isinstance(thread, threading.Timer):
                thread.cancel()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, method: str | None = None, key: str = "", fault: str | None = None) -> int:
        """How many requests matched: by method, key substring and (optionally) the fault applied."""
        with self._lock:
            return sum(
                1
                for s in self.seen
                if (method is None or s.method == method)
                and key in unquote(s.target)
                and (fault is None or s.fault == fault)
            )

    # ---------------------------------------------------------------- used by the handler

    def _take(self, method: str, target: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.kind != "refuse" and fault.matches(method, target):
                    fault.hits += 1
                    return fault
        return None

    def _take_refuse(self) -> bool:
        with self._lock:
            for fault in self.faults:
                if fault.kind == "refuse" and fault.hits < fault.times:
                    fault.hits += 1
                    self.seen.append(Seen("-", "-", "refuse", None))
                    return True
        return False

    def _record(self, request: _Request, fault: Fault | None, status: int | None) -> None:
        with self._lock:
            self.seen.append(Seen(request.method, request.target, fault.kind if fault else None, status))


class _Handler(socketserver.StreamRequestHandler):
    owner: FaultProxy
    timeout = SOCKET_TIMEOUT_S

    def handle(self) -> None:
        if self.owner._take_refuse():
            self._reset()
            return
        try:
            for _ in range(MAX_REQUESTS):
                request = self._read_head()
                if request is None or not self._serve(request):
                    return
        except (_ClientGone, OSError):
            return

    # ---------------------------------------------------------------- reading

    def _read_head(self) -> _Request | None:
        line = self.rfile.readline(65537)
        if not line:
            return None
        try:
            method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        except ValueError as exc:
            raise _ClientGone(f"bad request line {line!r}") from exc
        headers: list[tuple[str, str]] = []
        for _ in range(MAX_HEADER_LINES):
            raw = self.rfile.readline(65537)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        request = _Request(method, target, headers, b"")
        request.expect_continue = (request.header("expect") or "").lower() == "100-continue"
        return request

    def _read_body(self, request: _Request, limit: int | None = None) -> None:
        """Read the request body (all of it, or `limit` bytes of it)."""
        if request.expect_continue:
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if (request.header("transfer-encoding") or "").lower() == "chunked":
            request.body = self._read_chunked()
            request.headers = [(k, v) for k, v in request.headers if k.lower() != "transfer-encoding"]
            request.headers.append(("Content-Length", str(len(request.body))))
            return
        length = int(request.header("content-length") or 0)
        want = length if limit is None else min(limit, length)
        request.body = self._read_exact(want)

    def _read_exact(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise _ClientGone("short request body")
        return data

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self._read_exact(size))
            self.rfile.readline(3)

    # ---------------------------------------------------------------- answering

    def _serve(self, request: _Request) -> bool:
        """Answer one request; False when the connection must end."""
        fault = self.owner._take(request.method, request.target)
        kind = fault.kind if fault else None
        has_body = (
            int(request.header("content-length") or 0) > 0 or request.header("transfer-encoding") is not None
        )
        if kind == "reset" and has_body:
            self._read_body(request, limit=int(request.header("content-length") or 0) // 2)
            self.owner._record(request, fault, None)
            self._reset()
            return False
        self._read_body(request)
        if kind in ("error500", "slowdown"):
            status = 500 if kind == "error500" else 503
            self.owner._record(request, fault, status)
            self._send_error(status)
            return True
        if fault is not None and kind == "latency":
            time.sleep(fault.seconds)
        if kind == "corrupt" and request.body:
            request.body = _flip(request.body)
        status, reason, headers, body = self._forward(request)
        self.owner._record(request, fault, status)
        if kind == "drop_response":
            self._reset()
            return False
        is_head = request.method == "HEAD"
        declared = headers_value(headers, "content-length")
        if kind == "corrupt" and body and not request.body:
            body = _flip(body)
        if kind == "truncate":
            full = int(declared) if is_head and declared else len(body)
            body = body[: len(body) // 2]
            declared = str(full // 2)
        elif not is_head:
            declared = str(len(body))
        out = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
        if declared is not None:
            out.append(("Content-Length", declared))
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in out) + "\r\n"
        if kind == "cut" and body:
            self._send(head.encode("latin-1") + body[: len(body) // 2])
            self._close_gracefully()
            return False
        if kind == "reset" and body:
            self._send(head.encode("latin-1") + body[: len(body) // 2])
            self._reset()
            return False
        if kind == "reset":  # nothing to cut mid-way: reset before the answer
            self._reset()
            return False
        self._send(head.encode("latin-1") + (b"" if is_head else body))
        return True

    def _forward(self, request: _Request) -> tuple[int, str, list[tuple[str, str]], bytes]:
        host, port = self.owner._upstream
        conn = http.client.HTTPConnection(host, port, timeout=SOCKET_TIMEOUT_S)
        try:
            headers = {k: v for k, v in request.headers if k.lower() not in ("expect", "connection")}
            headers["Connection"] = "close"
            conn.request(request.method, request.target, body=request.body or None, headers=headers)
            response = conn.getresponse()
            body = response.read()
            return response.status, response.reason, list(response.getheaders()), body
        finally:
            conn.close()

    def _send_error(self, status: int) -> None:
        code, message = (
            ("InternalError", "We encountered an internal error. Please try again.")
            if status == 500
            else ("SlowDown", "Please reduce your request rate.")
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>faultproxy</RequestId></Error>"
        ).encode()
        reason = "Internal Server Error" if status == 500 else "Slow Down"
        self._send(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def _send(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone(str(exc)) from exc

    def _reset(self) -> None:
        """Close with RST instead of FIN: the client sees 'connection reset by peer'."""
        sock: socket.socket = self.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._drop_buffers()

    def _close_gracefully(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self._drop_buffers()

    def _drop_buffers(self) -> None:
        # StreamRequestHandler.finish() would flush wfile into a socket we just closed.
        self.wfile = _Discard()  # type: ignore[assignment]
        with contextlib.suppress(OSError):
            self.connection.close()


class _Discard:
    closed = False

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def headers_value(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
