"""Schema migrations: ``taskd/sql/NNNN_description.sql``, applied in order under an advisory lock.

``schema.sql`` beside them is the canonical result of applying them all; a test proves it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from taskd.errors import SchemaMissing, SchemaOutdated, SchemaTooNew

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
    conn: psycopg.AsyncConnection[Any], *, max_payload_bytes: int | None = None
) -> list[Migration]:
    """Apply the migrations that are missing; return them. Safe to run concurrently.

    With ``max_payload_bytes``, also make it the limit that ``taskd.submit_task`` enforces
    (``taskd.limits``): the server's configuration, never a caller's argument.

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


def migrate_blocking(conninfo: str, *, max_payload_bytes: int | None = None) -> list[Migration]:
    """:func:`migrate` for code without an event loop, or inside one (it runs in a thread).

    Used by the embedded database, which is migrated as it starts.
    """
    from concurrent.futures import ThreadPoolExecutor

    import anyio

    async def go() -> list[Migration]:
        conn = await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, application_name="taskd-migrate"
        )
        async with conn:
            return await migrate(conn, max_payload_bytes=max_payload_bytes)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, go).result()
