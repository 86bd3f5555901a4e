"""Test harness: a real PostgreSQL, a migrated template, and a fresh clone for every test.

The server is found in this order: ``TASKD_TEST_DATABASE_URL``; a server on 127.0.0.1:5432
(user postgres); a ``testcontainers`` PostgreSQL when a Docker engine answers; the embedded
``pgserver``. The template database is named after a hash of the migrations, built once under an
advisory lock, and cloned per test, so tests never share rows and ``pytest -n auto`` works.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from taskd.handlers.clients import HttpClients, http_clients
from taskd.queue import migrations
from taskd.queue.store import Store

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(
            ["docker", "info"], capture_output=True, timeout=10, check=False
        ).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def admin_url() -> Iterator[str]:
    """A superuser connection string to a server the tests may create databases on."""
    explicit = os.environ.get("TASKD_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if _answers(LOCAL_URL):
        yield LOCAL_URL
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    import pgserver

    # One directory for every xdist worker: pgserver shares the server between processes.
    data_dir = Path(tempfile.gettempdir()) / "taskd-test-pgserver"
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    yield server.get_uri()


def _migrations_digest() -> str:
    digest = hashlib.sha256()
    for entry in sorted(resources.files("taskd.sql").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            digest.update(entry.name.encode() + entry.read_bytes())
    return digest.hexdigest()[:12]


async def _migrate(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrations.migrate(conn)


@pytest.fixture(scope="session")
def template_name(admin_url: str) -> str:
    """A migrated template database, built once per schema version."""
    import anyio

    name = f"taskd_tpl_{_migrations_digest()}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(hashtext('taskd-test-template'))")
        try:
            exists = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                building = f"{name}_building"
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(building)
                    )
                )
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
                anyio.run(_migrate, make_conninfo(admin_url, dbname=building))
                admin.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(building), sql.Identifier(name)
                    )
                )
        finally:
            admin.execute("SELECT pg_advisory_unlock(hashtext('taskd-test-template'))")
    return name


def create_database(admin_url: str, template: str) -> tuple[str, str]:
    """Clone the template into a new database; return (name, url)."""
    name = f"taskd_t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    return name, make_conninfo(admin_url, dbname=name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def database_url(admin_url: str, template_name: str) -> Iterator[str]:
    """A migrated database of this test's own."""
    name, url = create_database(admin_url, template_name)
    try:
        yield url
    finally:
        drop_database(admin_url, name)


@pytest.fixture
def empty_database_url(admin_url: str) -> Iterator[str]:
    """An empty database (no taskd schema) of this test's own."""
    name = f"taskd_e_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin_url, dbname=name)
    finally:
        drop_database(admin_url, name)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = await Store.open(database_url, max_size=10)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def http() -> AsyncIterator[HttpClients]:
    """The HTTP clients the daemon gives handlers (one httpx client, one aiohttp session)."""
    async with http_clients(shards=1) as clients:
        yield clients


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    """A plain autocommit connection, for assertions and for arranging rows."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
        yield c
