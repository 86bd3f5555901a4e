"""A connection that could not be made: classified by SQLSTATE, never by the message."""

from __future__ import annotations

import pytest

from taskd.cli.app import EXIT_CODES
from taskd.errors import ConfigError, DatabaseRefused, DatabaseUnavailable
from taskd.queue.connection import connect_error, connection_kwargs


@pytest.mark.parametrize("sqlstate", [
    "53300",  # too many clients / remaining connection slots are reserved
    "57P03",  # the database system is starting up, in recovery, shutting down
    "57P01",  # terminating connection due to administrator command
    "08P01",  # PgBouncer's own refusals
    "08006",
    "53200",
    "58000",
])
def test_what_may_pass_by_itself_is_unavailable(sqlstate: str) -> None:
    error = connect_error("the same words whatever the reason", sqlstate, answered=True)
    assert type(error) is DatabaseUnavailable
    assert sqlstate in str(error)


@pytest.mark.parametrize("sqlstate", ["28P01", "28000", "3D000", "42501", "0A000"])
def test_what_will_not_pass_is_refused_and_a_config_error(sqlstate: str) -> None:
    error = connect_error("too many clients already", sqlstate, answered=True)
    assert isinstance(error, DatabaseRefused) and isinstance(error, ConfigError)
    assert error.sqlstate == sqlstate
    code = next(code for kind, code in EXIT_CODES if isinstance(error, kind))
    assert code == 2


def test_without_a_sqlstate_it_is_whether_a_server_answered() -> None:
    assert type(connect_error("refused", None, answered=False)) is DatabaseUnavailable
    assert type(connect_error("password?", None, answered=True)) is DatabaseRefused


def test_behind_a_transaction_pooler_nothing_is_prepared_and_no_options_are_sent() -> None:
    direct = connection_kwargs("dbname=app", "taskd x", 30.0)
    pooled = connection_kwargs("dbname=app", "taskd x", 30.0, pooler="transaction")
    assert "statement_timeout=30000" in direct["options"]
    assert "prepare_threshold" not in direct  # psycopg's default: prepare on the fifth run
    assert pooled == {"autocommit": True, "application_name": "taskd x",
                      "prepare_threshold": None}
