"""taskd.testing on a real database: drain, assert_submitted, and the pytest plugin's taskd_db
in a pytest of its own, as a service's test suite would use them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

from taskd.queue.store import Store
from taskd.settings import QueueSettings, Settings
from taskd.testing import assert_submitted, drain

pytestmark = pytest.mark.anyio

SETTINGS = Settings(handlers={}, queues={"standard": QueueSettings(
    initial=3, max=3, retry_base=60.0, retry_max=60.0)})


async def test_drain_runs_every_claimable_subtask_and_records_the_outcomes(
    store: Store,
) -> None:
    done = await store.submit("standard", "noop", [{"n": i} for i in range(7)])
    failed = await store.submit("standard", "fail", [{"permanent": True}])
    retried = await store.submit("standard", "fail", [{"message": "again"}], max_attempts=3)
    other = await store.submit("other", "noop", [{}])

    report = await drain(store, "standard", settings=SETTINGS)

    assert report.claimed == 9
    assert report.verdicts == {"completed": 7, "failed": 1, "retry": 1}
    tasks = {t: await store.get_task(t) for t in (done, failed, retried, other)}
    assert {t: (x.status if x else None) for t, x in tasks.items()} == {
        done: "completed", failed: "failed", retried: "processing", other: "pending",
    }
    [retry] = await store.list_subtasks(retried)
    assert (retry.status, retry.attempt, retry.error) == ("pending", 1, "RequestedFailure: again")
    # The retry waits for its backoff: nothing is claimable, so a second drain does nothing.
    assert (await drain(store, "standard", settings=SETTINGS)).claimed == 0


async def test_drain_gives_up_on_a_handler_that_snoozes_forever(store: Store) -> None:
    await store.submit("standard", "fail", [{"retry_later": 0}])
    with pytest.raises(RuntimeError, match="snoozing forever"):
        await drain(store, "standard", settings=SETTINGS, max_attempts=5)


async def test_assert_submitted_sees_an_open_transaction_and_says_what_it_found(
    store: Store, database_url: str,
) -> None:
    with psycopg.connect(database_url) as conn:  # one transaction until the block ends
        conn.execute("SELECT taskd.submit_task('standard', 'mail', %s::jsonb)",
                     ('[{"to": "alice"}, {"to": "bob"}]',))
        [task] = assert_submitted(conn, kind="mail", payload={"to": "bob"})
        assert task.payloads == [{"to": "alice"}, {"to": "bob"}] and task.queue == "standard"
        assert_submitted(conn, kind="mail", payloads=[{"to": "alice"}, {"to": "bob"}], count=1)
        with pytest.raises(AssertionError) as wrong:
            assert_submitted(conn, kind="mail", payload={"to": "carol"})
        assert "payload={'to': 'carol'}" in str(wrong.value)
        assert "[{'to': 'alice'}, {'to': 'bob'}]" in str(wrong.value)
        # Not committed yet: the store's connections do not see it.
        with pytest.raises(AssertionError, match="0 matched of 0"):
            await assert_submitted(store, kind="mail")
        conn.rollback()
    await store.submit("standard", "mail", [{"to": "dan"}], traceparent=TRACEPARENT)
    [committed] = await assert_submitted(store, kind="mail", payload={"to": "dan"}, count=1)
    assert committed.traceparent == TRACEPARENT
    with pytest.raises(AssertionError, match="expected 2 task"):
        await assert_submitted(store, kind="mail", count=2)


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

SERVICE_TESTS = '''
import os

import psycopg
import pytest
from taskd.settings import Settings
from taskd.testing import assert_submitted

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def signup(conn, email):
    conn.execute("SELECT taskd.submit_task('standard', 'noop', %s::jsonb)",
                 ('[{"to": "' + email + '"}]',))


async def test_signup_submits_and_the_work_runs(taskd_db):
    with psycopg.connect(taskd_db.url) as conn:
        signup(conn, "alice@example.com")
        assert_submitted(conn, kind="noop", payload={"to": "alice@example.com"})
    report = await taskd_db.drain("standard", settings=Settings(handlers={}))
    assert report.verdicts == {"completed": 1}


def test_each_test_has_a_database_of_its_own(taskd_db):
    with psycopg.connect(taskd_db.url) as conn:
        assert conn.execute("SELECT count(*) FROM taskd.tasks").fetchone() == (0,)
        name = conn.execute("SELECT current_database()").fetchone()[0]
    with open(os.environ["SEEN_DATABASES"], "a") as seen:
        seen.write(name + "\\n")
'''


def test_the_pytest_plugin_gives_a_service_s_tests_a_migrated_database(
    admin_url: str, tmp_path: Path,
) -> None:
    (tmp_path / "test_service.py").write_text(textwrap.dedent(SERVICE_TESTS))
    env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    env["TASKD_TEST_DATABASE_URL"] = admin_url
    env["SEEN_DATABASES"] = str(tmp_path / "seen")
    # The plugin comes in through its pytest11 entry point, as in a service's own venv.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "--rootdir", str(tmp_path), str(tmp_path / "test_service.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 passed" in done.stdout
    [seen] = (tmp_path / "seen").read_text().split()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        left = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (seen,)).fetchall()
    assert left == []  # dropped after its test


def test_without_a_server_the_fixture_fails_naming_the_variable(tmp_path: Path) -> None:
    (tmp_path / "test_service.py").write_text(textwrap.dedent(SERVICE_TESTS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    env["TASKD_CONFIG"] = str(tmp_path / "taskd.toml")
    (tmp_path / "taskd.toml").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "--rootdir", str(tmp_path), str(tmp_path / "test_service.py"), "-k", "own"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 1, done.stdout[-3000:]
    assert "TASKD_TEST_DATABASE_URL" in done.stdout
