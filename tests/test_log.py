"""Redaction without a server: URL userinfo of any shape, known secrets scrubbed from every log line,
and config errors that never quote a secret-looking value or print a terminal escape."""

from __future__ import annotations

import io
import json

import pytest

from job.config import load_config, url_credentials
from job.errors import ConfigError
from job.log import configure_logging, get_logger, redact, redact_url_userinfo

SLASH = "wJalrX/K7MD+bPxRfiCY"  # AWS secret keys hold '/' and '+'
SPACED = "pass phrase with spaces"


@pytest.mark.parametrize(
    "url",
    [
        f"http://AKIA:{SLASH}@127.0.0.1:9",
        f"http://AKIA:{SPACED}@proxy:3128/path",
        "http://AKIA:wJal%2FrX@127.0.0.1:9",
        f"https://{SLASH}@host",
        "  http://user:a@b@host:1",  # an '@' in the password, unencoded
    ],
)
def test_a_url_setting_loses_its_userinfo_whatever_it_holds(url: str) -> None:
    shown = redact_url_userinfo(url)
    assert "***@" in shown and "AKIA" not in shown and SLASH not in shown and "phrase" not in shown
    assert "a@b" not in shown and "%2F" not in shown


def test_urls_in_running_text_are_redacted_and_plain_urls_kept() -> None:
    text = f"Custom endpoint `http://AKIA:{SLASH}@127.0.0.1:9` was not a valid URI; see http://docs.example/x"
    shown = redact_url_userinfo(text)
    assert SLASH not in shown and "AKIA" not in shown and "http://***@127.0.0.1:9" in shown
    assert shown.endswith("see http://docs.example/x"), "a URL without userinfo is left alone"


def test_the_credentials_of_an_endpoint_are_known_secrets_as_given_and_decoded() -> None:
    assert url_credentials(f"http://AKIA:{SLASH}@127.0.0.1:9") == [SLASH]
    assert set(url_credentials("http://AKIA:wJal%2FrX@h")) == {"wJal%2FrX", "wJal/rX"}
    assert url_credentials("http://token-only@h") == ["token-only"]
    assert url_credentials("http://h:9/path") == []
    loaded = load_config(
        environ={}, cli_overrides={"storage.endpoint_url": f"http://AKIA:{SPACED}@127.0.0.1:9"}
    )
    assert SPACED in loaded.secrets()
    assert SPACED not in json.dumps(loaded.config.redacted())


def test_every_log_line_is_scrubbed_of_known_secrets_and_url_userinfo() -> None:
    # The secrets a run knows: its keys, and its endpoint's userinfo (a space in it cannot be told apart from
    # the text around it otherwise).
    loaded = load_config(
        environ={},
        cli_overrides={
            "storage.endpoint_url": f"http://u:{SPACED}@h",
            "storage.access_key_id": "AKIA",
            "storage.secret_access_key": SLASH,
        },
    )
    out = io.StringIO()
    configure_logging("json", secrets=loaded.secrets(), stream=out)
    get_logger(step="t").info(
        "failed",
        error=f"bad key {SLASH} at http://u:{SPACED}@h",
        nested={"k": [SLASH]},
        other=f"http://x:{SLASH}@elsewhere",
    )
    line = out.getvalue()
    assert SLASH not in line and "phrase" not in line and line.count("***") >= 4
    assert redact(f"x {SLASH} y", [SLASH]) == "x *** y"


def test_libraries_log_records_are_scrubbed_too() -> None:
    """A library's own warning (botocore and urllib3 quote URLs and keys) goes through the standard logging
    handlers, which get the same redaction."""
    import logging

    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    logging.getLogger().addHandler(handler)
    try:
        configure_logging("json", secrets=[SLASH], stream=io.StringIO())
        logging.getLogger("some.library").warning(
            "retrying http://AKIA:%s@127.0.0.1:9 with key %s", "pw", SLASH
        )
    finally:
        logging.getLogger().removeHandler(handler)
    assert (
        SLASH not in captured.getvalue()
        and ":pw@" not in captured.getvalue()
        and "***" in captured.getvalue()
    )


@pytest.mark.parametrize(
    ("overrides", "secret"),
    [
        ({"storage.secert_access_key": "sentinel-typo-1"}, "sentinel-typo-1"),  # a misspelt secret key
        ({"storage.secret_access_key": ["sentinel-list-2"]}, "sentinel-list-2"),  # a secret of the wrong type
        ({"storage.region": {"token": "sentinel-dict-3"}}, "sentinel-dict-3"),  # a mapping where text belongs
        ({"storage.access_key_id": 987654321}, "987654321"),  # a secret setting, wrong type
        ({"storage.max_attempts": "sentinel-4"}, None),  # a plain setting: quoted
    ],
)
def test_config_errors_never_quote_a_secret_looking_value(overrides: dict, secret: str | None) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(environ={}, cli_overrides=overrides)
    if secret is None:
        assert "sentinel-4" in str(raised.value), "a wrong plain value is shown, to help"
    else:
        assert secret not in str(raised.value)


def test_an_escape_sequence_in_a_key_is_shown_escaped() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(environ={}, cli_overrides={"train.\x1b[2Jepochs": 1})
    assert "\x1b" not in str(raised.value) and "\\x1b[2J" in str(raised.value)


def test_a_secret_starting_with_a_brace_is_a_secret_not_json() -> None:
    loaded = load_config(
        environ={"FINETUNE_STORAGE__SECRET_ACCESS_KEY": "{not-json-sentinel"}, cli_overrides={}
    )
    secret = loaded.config.storage.secret_access_key
    assert secret is not None and secret.get_secret_value() == "{not-json-sentinel"
    with pytest.raises(ConfigError, match="invalid JSON"):  # a mapping setting still decodes JSON
        load_config(environ={"FINETUNE_PAIRS__NEGATIVE_MIX": "{oops"}, cli_overrides={})


@pytest.mark.parametrize("ttl", [float("inf"), float("nan"), 1e9])
def test_a_lock_ttl_must_be_finite_and_sane(ttl: float) -> None:
    with pytest.raises(ConfigError, match="runtime.lock_ttl_s"):
        load_config(environ={}, cli_overrides={"runtime.lock_ttl_s": ttl})
