"""The test template database: one per schema; templates of other schemas go once unused."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from taskd.queue import testdb


def _databases(admin_url: str, *names: str) -> set[str]:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        rows = admin.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                             (list(names),)).fetchall()
    return {row[0] for row in rows}


def test_templates_of_other_schemas_are_dropped_once_unused(admin_url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    unstamped, stale, recent = (f"{testdb.TEMPLATE_PREFIX}test{tag}_{n}"
                                for n in ("unstamped", "stale", "recent"))
    now = datetime.now(UTC)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for name, used in ((unstamped, None), (stale, now - timedelta(hours=4)),
                           (recent, now - timedelta(minutes=5))):
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            if used is not None:
                admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    sql.Identifier(name),
                    sql.Literal("taskd test template, last used " + used.isoformat())))
    try:
        current = testdb.ensure_template(admin_url)
        # A session of another branch used `recent` minutes ago: it stays. The others go.
        assert _databases(admin_url, unstamped, stale, recent, current) == {recent, current}
        assert current == testdb.TEMPLATE_PREFIX + testdb.migrations_digest()
    finally:
        for name in (unstamped, stale, recent):
            testdb.drop_database(admin_url, name)
