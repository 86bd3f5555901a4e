"""Throw-away databases for tests: a migrated template per schema, cloned per test.

The template is named after a hash of the migrations (``taskd_tpl_<hash>``), built once under
an advisory lock and cloned with ``CREATE DATABASE ... TEMPLATE``, so that tests never share
rows and run in parallel. Under the same lock, templates of other schemas that no test session
has used for :data:`STALE_AFTER` are dropped: a schema change leaves no template behind for
long, while a session of another branch that still clones its own is left alone. Each session
stamps its template's last use in the database's comment.

For :mod:`taskd.testing.pytest_plugin` and taskd's own test suite. Needs a role that may
create databases.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from taskd.queue import migrations

TEMPLATE_PREFIX = "taskd_tpl_"
_LOCK = "taskd-test-template"
STALE_AFTER = timedelta(hours=3)
_STAMP = "taskd test template, last used "


def migrations_digest() -> str:
    """A hash of every migration file (and schema.sql): it names the template."""
    digest = hashlib.sha256()
    for entry in sorted(resources.files("taskd.sql").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            digest.update(entry.name.encode() + entry.read_bytes())
    return digest.hexdigest()[:12]


def ensure_template(admin_url: str) -> str:
    """The migrated template of this schema, built if missing; returns its name.

    Drops templates of other schemas unused for :data:`STALE_AFTER` (see the module).
    """
    name = TEMPLATE_PREFIX + migrations_digest()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(hashtext(%s))", (_LOCK,))
        try:
            if not _exists(admin, name):
                _build(admin, admin_url, name)
            now = admin.execute("SELECT now()").fetchone()
            assert now is not None
            admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal(_STAMP + now[0].isoformat())))
            drop_stale_templates(admin, keep=name, now=now[0])
        finally:
            admin.execute("SELECT pg_advisory_unlock(hashtext(%s))", (_LOCK,))
    return name


def drop_stale_templates(
    admin: psycopg.Connection[Any], *, keep: str, now: datetime | None = None
) -> list[str]:
    """Drop ``taskd_tpl_*`` databases other than ``keep`` last used before ``now -
    STALE_AFTER`` (a template without a stamp counts as unused); return their names.

    A template that cannot be dropped (in use) is left for a later run.
    """
    now = now or datetime.now(UTC)
    rows = admin.execute(
        "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
        " WHERE datname LIKE %s AND datname <> %s",
        (TEMPLATE_PREFIX.replace("_", r"\_") + "%", keep),
    ).fetchall()
    dropped = []
    for name, comment in rows:
        if _last_used(comment) > now - STALE_AFTER:
            continue
        try:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        except psycopg.errors.ObjectInUse:
            continue
        dropped.append(name)
    return dropped


def _last_used(comment: str | None) -> datetime:
    if comment and comment.startswith(_STAMP):
        try:
            return datetime.fromisoformat(comment.removeprefix(_STAMP))
        except ValueError:
            pass
    return datetime.min.replace(tzinfo=UTC)


def _exists(admin: psycopg.Connection[Any], name: str) -> bool:
    return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() \
        is not None


def _build(admin: psycopg.Connection[Any], admin_url: str, name: str) -> None:
    building = f"{name}_building"
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
        sql.Identifier(building)))
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
    migrations.migrate_blocking(make_conninfo(admin_url, dbname=building))
    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(building), sql.Identifier(name)))


def create_database(admin_url: str, template: str, prefix: str = "taskd_t_") -> tuple[str, str]:
    """Clone ``template`` into a new database; return its name and URL."""
    name = f"{prefix}{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)))
    return name, make_conninfo(admin_url, dbname=name)


def create_empty_database(admin_url: str, prefix: str = "taskd_e_") -> tuple[str, str]:
    """A new database without the taskd schema; return its name and URL."""
    name = f"{prefix}{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, make_conninfo(admin_url, dbname=name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop the database, closing whatever is still connected to it."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
