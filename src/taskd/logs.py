"""Logging: one line per event, text or JSON, never a database password."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]+@|(password=)\S+", re.IGNORECASE)

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# Extras that are not shown: uvicorn's copy of the message with terminal colour codes.
_HIDDEN = _STANDARD | {"color_message"}


def redact_secrets(text: str) -> str:
    """Hide passwords in connection strings."""
    return _PASSWORD.sub(lambda m: (m[1] or m[2]) + "***" + ("@" if m[1] else ""), text)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in vars(record).items() if k not in _HIDDEN}
        line = (
            f"{datetime.fromtimestamp(record.created, UTC):%Y-%m-%dT%H:%M:%S.%f}"[:-3]
            + f"Z {record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact_secrets(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        event.update({k: v for k, v in vars(record).items() if k not in _HIDDEN})
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return redact_secrets(json.dumps(event, default=str))


def setup_logging(log_format: str = "text", level: str = "info") -> None:
    """Send taskd's logs to stderr, one line per event."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "psycopg.pool", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
