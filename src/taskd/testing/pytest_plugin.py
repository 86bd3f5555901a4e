"""pytest fixtures for services that submit work to taskd (registered as the ``pytest11``
entry point ``taskd``; or ``pytest_plugins = ["taskd.testing.pytest_plugin"]``).

``taskd_db``: a migrated throw-away database of the test's own, on the server named by
``TASKD_TEST_DATABASE_URL`` or else the ``database_url`` setting (``TASKD_DATABASE_URL``);
the role needs CREATEDB. The schema is migrated once per session into a template
(``taskd_tpl_<hash>``) that each test clones; the test's database is dropped after it::

    async def test_signup_sends_a_welcome_mail(taskd_db):
        await signup(taskd_db.url, "alice@example.com")      # submits a "mail" task
        report = await taskd_db.drain("standard")            # runs it, in this process
        assert report.verdicts == {"completed": 1}
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from taskd.queue import testdb
from taskd.queue.store import Store
from taskd.settings import Settings, load_settings
from taskd.testing.draining import DrainReport, drain


@dataclass(frozen=True)
class TaskdDatabase:
    """A migrated database of one test: ``url``, and :meth:`drain` to run its queues."""

    url: str

    async def drain(
        self, queue: str = "standard", *, settings: Settings | None = None,
        within: float = 60.0,
    ) -> DrainReport:
        """:func:`taskd.testing.drain` on this database (a store opened for the call)."""
        store = await Store.open(self.url, min_size=1, max_size=4)
        try:
            return await drain(store, queue, settings=settings, within=within)
        finally:
            await store.close()

    async def open_store(self) -> Store:
        """A :class:`~taskd.queue.store.Store` on this database; close it when done."""
        return await Store.open(self.url, min_size=1, max_size=4)


def server_url() -> str | None:
    """Where throw-away databases are created: ``TASKD_TEST_DATABASE_URL``, else the
    ``database_url`` setting; None when neither is set."""
    explicit = os.environ.get("TASKD_TEST_DATABASE_URL")
    if explicit:
        return explicit
    configured = load_settings().database_url
    return configured.get_secret_value() if configured is not None else None


@pytest.fixture(scope="session")
def taskd_server_url() -> str:
    """A connection string to the server the tests may create databases on."""
    url = server_url()
    if url is None:
        pytest.fail("taskd_db needs a PostgreSQL server: set TASKD_TEST_DATABASE_URL (a role "
                    "with CREATEDB) or TASKD_DATABASE_URL", pytrace=False)
    return url


@pytest.fixture(scope="session")
def taskd_template(taskd_server_url: str) -> str:
    """The migrated template database of this taskd's schema."""
    return testdb.ensure_template(taskd_server_url)


@pytest.fixture
def taskd_db(taskd_server_url: str, taskd_template: str) -> Iterator[TaskdDatabase]:
    """A migrated database of this test's own, dropped after it."""
    name, url = testdb.create_database(taskd_server_url, taskd_template)
    try:
        yield TaskdDatabase(url)
    finally:
        testdb.drop_database(taskd_server_url, name)
