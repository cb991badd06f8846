"""Logging: structlog, JSON lines for `kubectl logs`, readable lines on a terminal.

Every line carries run_id and step (bound by the pipeline). Known secret values are
replaced before anything is rendered. `Progress` reports done/total, rate and ETA at a
steady rate, plus a tqdm bar when stderr is a terminal.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

import structlog

REDACTED = "***"
# scheme://userinfo@ : a URL carrying credentials (an endpoint through a proxy, in botocore's error text).
# In running text the userinfo runs to the last '@' before a space, a quote or a bracket: an unencoded
# secret may hold '/', ':' or '+' (AWS secret keys do), so '/' does not end it. A path holding '@' is
# redacted too, which errs on the safe side.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s\"'<>()\[\]]*@")
# A whole value that starts like a URL: everything up to its last '@' is userinfo, spaces included.
_URL_VALUE = re.compile(r"^(?P<scheme>\s*[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>.*)@", re.DOTALL)


def _secret_values(secrets: Iterable[str]) -> list[str]:
    """Longest first, so a secret containing another is replaced whole; very short ones skipped."""
    return sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)


def redact_url_userinfo(text: str) -> str:
    """`text` with the credentials of every URL in it (`http://user:pass@host`) replaced by '***'.

    A text that is itself one URL (a setting) loses everything up to its last '@', whatever the
    userinfo holds; in running text a URL's userinfo ends at the last '@' before a space."""
    if "@" not in text:
        return text
    whole = _URL_VALUE.match(text)
    if whole:
        return f"{whole.group('scheme')}{REDACTED}@" + text[whole.end() :]
    return _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


def url_userinfo(value: str) -> str | None:
    """The userinfo of a value that starts like a URL (everything between '://' and its last '@'), or None."""
    whole = _URL_VALUE.match(value)
    return whole.group("userinfo") if whole else None


def _replace_all(text: str, values: list[str]) -> str:
    for secret in values:
        text = text.replace(secret, REDACTED)
    return redact_url_userinfo(text)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every known secret value, and the credentials in any URL, replaced by '***'."""
    return _replace_all(text, _secret_values(secrets))


def _redactor(secrets: Iterable[str]) -> Any:
    values = _secret_values(secrets)

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return _replace_all(value, values)
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [scrub(v) for v in value]
        return value

    def processor(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        return scrub(event)

    return processor


class _RedactingFilter(logging.Filter):
    """Libraries' own log records (botocore, urllib3 warnings on stderr) get the same redaction."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.values = _secret_values(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _replace_all(record.getMessage(), self.values), None
        return True


def configure_logging(log_format: str = "auto", secrets: Iterable[str] = (), stream: Any = None) -> None:
    """Set up structlog once per process. `log_format`: auto (JSON unless a terminal), json, console."""
    secrets = list(secrets)
    stream = stream or sys.stdout
    use_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redactor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries' own chatter (transformers, urllib3) stays at warnings, on stderr.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, _RedactingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(_RedactingFilter(secrets))
    for noisy in (
        "transformers",
        "sentence_transformers",
        "datasets",
        "urllib3",
        "botocore",
        "filelock",
        "httpx",
        "bm25s",
    ):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def get_logger(**context: Any) -> Any:
    return structlog.get_logger("finetune-job").bind(**context)


class Progress:
    """Log `done/total`, rate and ETA every `interval_s` seconds (and at the end)."""

    def __init__(
        self, log: Any, what: str, total: int, unit: str = "items", interval_s: float = 10.0
    ) -> None:
        self.log, self.what, self.total, self.unit, self.interval_s = log, what, total, unit, interval_s
        self.done = 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit=unit, leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        now = time.monotonic()
        if now - self.last >= self.interval_s or self.done >= self.total:
            self.last = now
            self._emit(now)

    def _emit(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else None
        self.log.info(
            "progress",
            task=self.what,
            done=self.done,
            total=self.total,
            unit=self.unit,
            rate_per_s=round(rate, 2),
            elapsed_s=round(elapsed, 1),
            eta_s=None if eta is None else round(eta, 1),
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
