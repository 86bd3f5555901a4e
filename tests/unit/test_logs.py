"""Log lines: one per event, JSON when asked, never a password."""

from __future__ import annotations

import json
import logging

import pytest

from taskd.logs import JsonFormatter, TextFormatter, redact_secrets


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("postgresql://app:s3cret@db:5432/app", "s3cret"),
        ("postgres://app:p%40ss@db/app", "p%40ss"),
        ("host=db user=app password=hunter2 dbname=app", "hunter2"),
    ],
)
def test_passwords_are_redacted(text: str, hidden: str) -> None:
    out = redact_secrets(text)
    assert hidden not in out
    assert "***" in out


def test_an_empty_password_stays_copyable() -> None:
    # The embedded database's URL has none; psql must accept what the log shows.
    url = "postgresql://postgres:@/postgres?host=/tmp/pg"
    assert redact_secrets(url) == url


def test_json_lines_carry_extras_and_no_password() -> None:
    record = logging.makeLogRecord({
        "name": "taskd.executor.daemon", "levelname": "INFO", "levelno": 20,
        "msg": "starting %s", "args": ("postgresql://u:pw123@h/db",), "queue": "standard",
    })
    event = json.loads(JsonFormatter().format(record))
    assert event["queue"] == "standard" and event["level"] == "info"
    assert "pw123" not in json.dumps(event)
    assert "\n" not in TextFormatter().format(record)


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_uvicorns_coloured_copy_of_the_message_is_not_logged(
    formatter: logging.Formatter,
) -> None:
    # uvicorn passes extra={"color_message": ...}: the message again, with terminal colours.
    record = logging.makeLogRecord({
        "name": "uvicorn.error", "levelname": "INFO", "levelno": 20,
        "msg": "Started server process [%d]", "args": (42,),
        "color_message": "Started server process [\x1b[36m%d\x1b[0m]", "queue": "standard",
    })
    line = formatter.format(record)
    assert "color_message" not in line and "\x1b" not in line and "[36m" not in line
    assert "Started server process [42]" in line and "standard" in line
