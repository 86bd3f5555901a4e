"""Test harness: a real PostgreSQL, a migrated template, and a fresh clone for every test.

The server is found in this order: ``TASKD_TEST_DATABASE_URL``; a server on 127.0.0.1:5432
(user postgres); a ``testcontainers`` PostgreSQL when a Docker engine answers; the embedded
``pgserver``. The template database is named after a hash of the migrations, built once under an
advisory lock, and cloned per test, so tests never share rows and ``pytest -n auto`` works
(:mod:`taskd.queue.testdb`, which the ``taskd_db`` fixture of taskd's pytest plugin uses too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from taskd.handlers.clients import HttpClients, http_clients
from taskd.queue import testdb
from taskd.queue.store import Store

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# The example handlers (tests/fixtures/example-handlers) are installed for the tests only,
# into a folder of their own (`make test`: .venv/test-site), never into the environment that
# `make run` uses; the tests and the processes they start find them through the path.
TEST_SITE = Path(os.environ.get("TASKD_TEST_SITE")
                 or Path(__file__).resolve().parents[1] / ".venv" / "test-site")
if TEST_SITE.is_dir() and str(TEST_SITE) not in sys.path:
    sys.path.insert(0, str(TEST_SITE))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TEST_SITE), os.environ.get("PYTHONPATH")) if p)


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


@pytest.fixture(scope="session")
def template_name(admin_url: str) -> str:
    """A migrated template database, built once per schema version; templates of older
    schemas are dropped (taskd.queue.testdb)."""
    return testdb.ensure_template(admin_url)


@pytest.fixture
def database_url(admin_url: str, template_name: str) -> Iterator[str]:
    """A migrated database of this test's own."""
    name, url = testdb.create_database(admin_url, template_name)
    try:
        yield url
    finally:
        testdb.drop_database(admin_url, name)


@pytest.fixture
def empty_database_url(admin_url: str) -> Iterator[str]:
    """An empty database (no taskd schema) of this test's own."""
    name, url = testdb.create_empty_database(admin_url)
    try:
        yield url
    finally:
        testdb.drop_database(admin_url, name)


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
