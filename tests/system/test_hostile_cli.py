"""Hostile input to the CLI (``taskd submit``, ``taskd tasks ...``) and to settings, table-driven.

Each run must exit with its documented code (2: bad input or settings, one line on stderr
naming the problem; 1: not found) — never a traceback — and leave every taskd table as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.test_hostile_api import table_snapshot

REPO = Path(__file__).resolve().parents[2]
DEEP = 10_000
Arg = str | bytes


def _run(args: list[Arg], database_url: str, env: dict[str, Arg] | None = None
         ) -> subprocess.CompletedProcess[bytes]:
    environ: dict[bytes, bytes] = {k: v for k, v in os.environb.items()
                                   if not k.startswith(b"TASKD_")}
    environ[b"TASKD_DATABASE_URL"] = database_url.encode()
    environ[b"PYTHONPATH"] = str(REPO).encode()
    for key, value in (env or {}).items():
        environ[key.encode()] = value if isinstance(value, bytes) else value.encode()
    argv: list[Arg] = [sys.executable, "-m", "taskd", *args]
    return subprocess.run(argv, env=environ, capture_output=True, timeout=60, check=False)


# (id, argv after `taskd`, extra environment, exit code, a word stderr must contain)
CASES: list[tuple[str, list[Arg], dict[str, Arg], int, str]] = [
    ("payload-malformed", ["submit", "--payload", "{bad"], {}, 2, "--payload"),
    ("payload-truncated", ["submit", "--payload", '{"a": [1, 2'], {}, 2, "--payload"),
    ("payload-array", ["submit", "--payload", "[1]"], {}, 2, "object"),
    ("payload-nested-10000", ["submit", "--payload", '{"x": ' + "[" * DEEP + "]" * DEEP + "}"],
     {}, 2, "--payload"),
    ("payload-1e309", ["submit", "--payload", '{"x": 1e309}'], {}, 2, "payloads"),
    ("payload-nan", ["submit", "--payload", '{"x": NaN}'], {}, 2, "payloads"),
    ("payload-int-5000-digits", ["submit", "--payload", '{"x": ' + "9" * 5000 + "}"], {}, 2,
     "--payload"),
    ("payload-nul-escape", ["submit", "--payload", '{"x": "\\u0000"}'], {}, 2, "NUL"),
    ("payload-lone-surrogate", ["submit", "--payload", '{"x": "\\ud800"}'], {}, 2, "json"),
    ("payload-invalid-utf8-argv", [b"submit", b"--payload", b'{"x": "\xff"}'], {}, 2, "json"),
    ("name-invalid-utf8-argv", [b"submit", b"--name", b"\xff\xfe"], {}, 2, "UTF-8"),
    ("queue-sql", ["submit", "--queue", "standard'; DROP TABLE taskd.tasks; --"], {}, 2,
     "queue"),
    ("kind-sql", ["submit", "--kind", "noop' OR '1'='1"], {}, 2, "kind"),
    ("count-zero", ["submit", "--count", "0"], {}, 2, "--count"),
    ("count-huge", ["submit", "--count", "9" * 30], {}, 2, "--count"),
    ("count-text", ["submit", "--count", "many"], {}, 2, "count"),
    ("priority-huge", ["submit", "--priority", str(2**70)], {}, 2, "priority"),
    ("priority-out-of-range", ["submit", "--priority", "-1001"], {}, 2, "priority"),
    ("max-attempts-negative", ["submit", "--max-attempts", "-1"], {}, 2, "max_attempts"),
    ("max-attempts-zero", ["submit", "--max-attempts", "0"], {}, 2, "max"),
    ("show-negative", ["tasks", "show", "--", "-1"], {}, 1, "no task"),
    ("show-beyond-64-bits", ["tasks", "show", "9" * 30], {}, 1, "no task"),
    ("show-text", ["tasks", "show", "1;DROP TABLE taskd.tasks"], {}, 2, "task_id"),
    ("cancel-beyond-64-bits", ["tasks", "cancel", "9" * 30], {}, 1, "no task"),
    ("retry-beyond-64-bits", ["tasks", "retry", str(2**63)], {}, 1, "no task"),
    ("list-limit-negative", ["tasks", "list", "--limit", "-5"], {}, 2, "limit"),
    ("list-before-beyond-64-bits", ["tasks", "list", "--before", "9" * 30], {}, 2, "bigint"),
    ("list-queue-sql", ["tasks", "list", "--queue", "x' OR '1'='1"], {}, 0, ""),
    ("list-status-bogus", ["tasks", "list", "--status", "pending' --"], {}, 2, "status"),
    ("pause-unknown", ["queues", "pause", "nope"], {}, 1, "unknown queue 'nope'"),
    ("pause-sql", ["queues", "pause", "x'; DROP TABLE taskd.tasks; --"], {}, 1,
     "unknown queue"),
    ("resume-unknown", ["queues", "resume", "nope"], {}, 1, "unknown queue 'nope'"),
    ("pause-by-201", ["queues", "pause", "standard", "--by", "x" * 201], {}, 2,
     "paused_by is longer than 200"),
    # -- settings ------------------------------------------------------------------------
    ("env-pool-size-text", ["submit"], {"TASKD_POOL_SIZE": "many"}, 2, "pool_size"),
    ("env-pool-size-huge", ["submit"], {"TASKD_POOL_SIZE": "9" * 30}, 2, "pool_size"),
    ("env-queue-max-1e309", ["submit"], {"TASKD_QUEUES__STANDARD__MAX": "1e309"}, 2,
     "queues.standard.max"),
    ("env-queues-malformed-json", ["submit"], {"TASKD_QUEUES": "{bad"}, 2, "queues"),
    ("env-queues-nested-10000", ["submit"],
     {"TASKD_QUEUES": '{"standard": ' + "[" * DEEP + "]" * DEEP + "}"}, 2, "queues"),
    ("env-handlers-nested-10000", ["submit"],
     {"TASKD_HANDLERS": "[" * DEEP + "]" * DEEP}, 2, "handlers"),
    ("env-queue-name-sql", ["submit"], {"TASKD_QUEUES": '{"x\'; --": {}}'}, 2, "queue name"),
    ("env-rate-limit-zero", ["submit"], {"TASKD_QUEUES__STANDARD__RATE_LIMIT": "0/s"}, 2,
     "queues.standard.rate_limit"),
    ("env-rate-limit-abc", ["submit"], {"TASKD_QUEUES__STANDARD__RATE_LIMIT": "abc"}, 2,
     "queues.standard.rate_limit"),
    ("env-rate-limit-negative", ["queues", "list"],
     {"TASKD_QUEUES__LUMINA__RATE_LIMIT": "-5/s"}, 2, "queues.lumina.rate_limit"),
    ("env-log-format-bogus", ["submit"], {"TASKD_LOG_FORMAT": "xml'; --"}, 2, "log_format"),
    ("env-unknown-setting", ["submit"], {"TASKD_API__JWT_SECRETT": "x"}, 2, "jwt_secrett"),
    ("env-invalid-utf8", ["submit"], {"TASKD_EXECUTOR_GROUP": b"\xff\xfe"}, 2, "unicode"),
    ("env-config-missing", ["submit"], {"TASKD_CONFIG": "/nonexistent/taskd.toml"}, 2,
     "TASKD_CONFIG"),
]


@pytest.mark.parametrize(("name", "args", "env", "code", "word"), CASES,
                         ids=[c[0] for c in CASES])
def test_cli_refuses_hostile_input_with_one_line_and_writes_nothing(
    database_url: str, name: str, args: list[Arg], env: dict[str, Arg], code: int, word: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as db:
        before = table_snapshot(db)
        done = _run(args, database_url, env)
        stderr = done.stderr.decode(errors="replace")
        assert done.returncode == code, (done.returncode, stderr[-2000:])
        assert "Traceback" not in stderr, stderr[-3000:]
        assert word.lower() in stderr.lower(), stderr[-2000:]
        if code:
            assert len(stderr.strip().splitlines()) <= 12, stderr  # one line, or typer's box
        assert table_snapshot(db) == before


@pytest.mark.parametrize(("name", "content"), [
    ("toml-malformed", b"[queues.standard\nmax = "),
    ("toml-invalid-utf8", b"executor_group = \"\xff\xfe\"\n"),
    ("toml-nul", b"executor_group = \"a\x00b\"\n"),
    ("toml-wrong-type", b"pool_size = \"ten\"\n"),
    ("toml-huge-int", b"pool_size = 99999999999999999999999\n"),
])
def test_config_file_with_hostile_content_is_one_line_exit_2(
    database_url: str, tmp_path: Path, name: str, content: bytes
) -> None:
    config = tmp_path / "taskd.toml"
    config.write_bytes(content)
    done = _run(["submit"], database_url, {"TASKD_CONFIG": str(config)})
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.startswith("taskd: error:"), stderr


def test_sql_metacharacters_in_a_cli_submission_are_data(database_url: str) -> None:
    nasty = "'); DELETE FROM taskd.tasks; --"
    done = _run(["submit", "--name", nasty, "--payload", '{"q": "' + nasty + '"}'],
                database_url)
    assert done.returncode == 0, done.stderr.decode()
    with psycopg.connect(database_url, autocommit=True) as db:
        row: Any = db.execute("SELECT t.name, s.payload FROM taskd.tasks t "
                              "JOIN taskd.subtasks s ON s.task_id = t.id").fetchone()
    assert row == (nasty, {"q": nasty})


def _assert_one_line_exit_2(done: subprocess.CompletedProcess[bytes], word: str) -> None:
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 2, stderr[-2000:]
    assert stderr.startswith("taskd: error:") and "Traceback" not in stderr, stderr[-2000:]
    assert len(stderr.strip().splitlines()) == 1 and word in stderr, stderr


@pytest.mark.parametrize("payload", ['{"x": ' + "[" * DEEP + "]" * DEEP + "}",
                                     '{"x": ' + "9" * 5000 + "}"], ids=["nested", "digits"])
def test_payload_that_python_cannot_parse_is_exit_2_not_a_traceback(
    database_url: str, payload: str
) -> None:
    """Regression: json.loads raises RecursionError (10,000 levels) and ValueError (an int of
    5,000 digits), not JSONDecodeError: `taskd submit` printed a traceback and exited 1."""
    _assert_one_line_exit_2(_run(["submit", "--payload", payload], database_url), "--payload")


def test_name_that_is_not_utf8_is_exit_2_not_a_traceback(database_url: str) -> None:
    """Regression: argv bytes that are not UTF-8 reach Python as lone surrogates; psycopg could
    not encode them (UnicodeEncodeError) and `taskd submit --name` printed a traceback."""
    _assert_one_line_exit_2(_run([b"submit", b"--name", b"\xff\xfe"], database_url), "name")


def test_max_attempts_zero_is_refused_not_replaced_by_the_default(database_url: str) -> None:
    """Regression: `--max-attempts 0` was falsy, so the queue's default was used and the task
    was created; 0 is outside 1..1000 and must be refused like -1."""
    with psycopg.connect(database_url, autocommit=True) as db:
        before = table_snapshot(db)
        _assert_one_line_exit_2(_run(["submit", "--max-attempts", "0"], database_url),
                                "max_attempts")
        assert table_snapshot(db) == before


@pytest.mark.parametrize("variable", ["TASKD_QUEUES", "TASKD_HANDLERS"])
def test_settings_nested_too_deeply_are_exit_2_not_a_traceback(
    database_url: str, variable: str
) -> None:
    """Regression: a JSON setting nested 10,000 levels raised RecursionError out of
    load_settings, past the one-line ConfigError path: a traceback and exit 1."""
    done = _run(["submit"], database_url, {variable: "[" * DEEP + "]" * DEEP})
    _assert_one_line_exit_2(done, "nested")
