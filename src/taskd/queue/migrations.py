"""Schema migrations: ``taskd/sql/NNNN_description.sql``, applied in order under an advisory lock.

``schema.sql`` beside them is the canonical result of applying them all; a test proves it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from taskd.errors import SchemaMissing, SchemaOutdated, SchemaTooNew
from taskd.queue.connection import run_query
from taskd.queue.submission import routes_from_settings
from taskd.settings import Settings
from taskd.types import NotifyRoute

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# The migrator's own bookkeeping, created before any migration runs. schema.sql repeats it.
BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS taskd;
CREATE TABLE IF NOT EXISTS taskd.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""

_LOCK_KEY = "taskd.migrate"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with this package, in version order."""
    found = []
    for entry in resources.files("taskd.sql").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    # Gaps are allowed: branches worked on at once take numbers of their own, merged later.
    if not versions or versions[0] < 1 or len(set(versions)) != len(versions):
        raise RuntimeError(f"migration versions must be distinct and from 1 on, found {versions}")
    return tuple(found)


def latest_version() -> int:
    return migrations()[-1].version


def canonical_schema() -> str:
    """The text of ``schema.sql``."""
    return resources.files("taskd.sql").joinpath("schema.sql").read_text("utf-8")


async def migrate(
    conn: psycopg.AsyncConnection[Any], *, max_payload_bytes: int | None = None,
    allow_http_private: bool | None = None, notify_routes: Sequence[NotifyRoute] | None = None,
) -> list[Migration]:
    """Apply the migrations that are missing; return them. Safe to run concurrently.

    With ``max_payload_bytes``, also make it the limit that ``taskd.submit_task`` enforces
    (``taskd.limits``): the server's configuration, never a caller's argument. Likewise
    ``allow_http_private`` (plain http notification targets on private addresses) and
    ``notify_routes`` (queue defaults and the operator's target: ``taskd.notify_routes`` then
    holds exactly these; raises :class:`psycopg.errors.InvalidParameterValue` for one the
    database refuses, and nothing of this call is written).

    Everything happens in one transaction under a transaction-level advisory lock, so a second
    migrator waits, then finds nothing left to do.
    """
    applied_now: list[Migration] = []
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_LOCK_KEY,)
        )
        await conn.execute(BOOTSTRAP.encode())
        cur = await conn.execute("SELECT version FROM taskd.schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        newer = sorted(v for v in done if v > latest_version())
        if newer:
            raise SchemaTooNew(
                f"the database has taskd migrations {newer} that this version does not know; "
                "upgrade taskd"
            )
        for migration in migrations():
            if migration.version in done:
                continue
            await conn.execute(sql.SQL(migration.sql))  # type: ignore[arg-type, unused-ignore]
            await conn.execute(
                "INSERT INTO taskd.schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied_now.append(migration)
        if max_payload_bytes is not None:
            await conn.execute(
                "UPDATE taskd.limits SET max_payload_bytes = %(n)s, updated_at = now()"
                " WHERE max_payload_bytes IS DISTINCT FROM %(n)s", {"n": max_payload_bytes},
            )
        if allow_http_private is not None:
            await conn.execute(
                "UPDATE taskd.limits SET notify_allow_http_private = %(a)s, updated_at = now()"
                " WHERE notify_allow_http_private IS DISTINCT FROM %(a)s",
                {"a": allow_http_private},
            )
        if notify_routes is not None:
            await run_query(conn, "notify_routes_delete_others",
                            {"scopes": [r.scope for r in notify_routes]})
            for route in notify_routes:
                values = {"scope": route.scope, "url": route.url,
                          "notify_on": list(route.notify_on)}
                await run_query(conn, "check_notify_target", values)
                await run_query(conn, "notify_routes_upsert", values)
    return applied_now


async def schema_version(conn: psycopg.AsyncConnection[Any]) -> int | None:
    """The highest applied migration, or None when the database has no taskd schema."""
    cur = await conn.execute("SELECT to_regclass('taskd.schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute("SELECT max(version) FROM taskd.schema_migrations")
    row = await cur.fetchone()
    return int(row[0]) if row and row[0] is not None else None


async def check_schema(conn: psycopg.AsyncConnection[Any]) -> int:
    """Raise a :class:`SchemaError` unless the database is at this code's schema version."""
    version = await schema_version(conn)
    expected = latest_version()
    if version is None:
        raise SchemaMissing("the database has no taskd schema: run `taskd migrate`")
    if version < expected:
        raise SchemaOutdated(
            f"the database schema is at version {version}, this taskd needs {expected}: "
            "run `taskd migrate`"
        )
    if version > expected:
        raise SchemaTooNew(
            f"the database schema is at version {version}, newer than this taskd knows "
            f"({expected}): upgrade taskd before running it against this database"
        )
    return version


def migrate_options(settings: Settings) -> dict[str, Any]:
    """What ``taskd migrate`` writes from the settings besides the schema: the keyword
    arguments of :func:`migrate`. Raises :class:`taskd.errors.InvalidInput` for a bad route."""
    return {
        "max_payload_bytes": settings.max_payload_bytes,
        "allow_http_private": settings.notifications.allow_http_private,
        "notify_routes": routes_from_settings(settings),
    }


def migrate_blocking(conninfo: str, **settings: Any) -> list[Migration]:
    """:func:`migrate` for code without an event loop, or inside one (it runs in a thread).

    Used by the embedded database, which is migrated as it starts. ``settings``: the keyword
    arguments of :func:`migrate`.
    """
    from concurrent.futures import ThreadPoolExecutor

    import anyio

    async def go() -> list[Migration]:
        conn = await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, application_name="taskd-migrate"
        )
        async with conn:
            return await migrate(conn, **settings)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, go).result()
