"""sql/roles.sql: idempotent; each role can do its job (a real daemon, the API, `taskd status`)
and cannot do more. Roles are cluster-wide, so the test names its own and drops them after."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib import resources
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from taskd.api import mint_token, serve_in_thread
from taskd.queue.queries import load_queries
from taskd.settings import Settings
from tests.console_support import csrf_of, sign_in
from tests.integration.api_support import make_settings
from tests.system.daemons import daemons, scalar, wait_for

ROLES_SQL = resources.files("taskd.sql").joinpath("roles.sql").read_text("utf-8")


def apply_roles(url: str, names: dict[str, str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for kind, name in names.items():
            conn.execute(sql.SQL("SET taskd.{} = {}").format(
                sql.Identifier(f"{kind}_role"), sql.Literal(name)))
        conn.execute(ROLES_SQL)  # type: ignore[arg-type]


@pytest.fixture
def roles(database_url: str) -> Iterator[dict[str, str]]:
    """Group roles from roles.sql and a login role in each, with names of this test's own."""
    suffix = uuid.uuid4().hex[:8]
    groups = {kind: f"t{suffix}_{kind}" for kind in ("executor", "api", "readonly", "client")}
    logins = {kind: f"{name}_login" for kind, name in groups.items()}
    try:
        apply_roles(database_url, groups)
        apply_roles(database_url, groups)  # idempotent: a second run changes nothing
        with psycopg.connect(database_url, autocommit=True) as conn:
            for kind, login in logins.items():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                    sql.Identifier(login), sql.Identifier(groups[kind])))
        yield {kind: make_conninfo(database_url, user=login) for kind, login in logins.items()}
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for name in [*logins.values(), *groups.values()]:
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                    # Grants in this database; the database itself is dropped after the test.
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _refused(url: str, statement: str, *params: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement, params)  # type: ignore[arg-type]


def alice_task(url: str, settings: Settings) -> int:
    token = mint_token(settings.api, "alice", ttl=600)
    made = httpx.post(f"{url}/v1/tasks", json={"kind": "noop", "subtasks": [{"n": 1}]},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert made.status_code == 201, made.text
    return int(made.json()["id"])


def test_the_api_role_serves_the_api_and_can_do_nothing_else(
    roles: dict[str, str], database_url: str
) -> None:
    settings = make_settings(roles["api"])
    with serve_in_thread(settings, roles["api"]) as api:
        def c(user: str, admin: bool = False) -> httpx.Client:
            token = mint_token(settings.api, user, admin=admin, ttl=600)
            return httpx.Client(base_url=api.url, timeout=30,
                                headers={"Authorization": f"Bearer {token}"})

        with c("root", admin=True) as root, c("alice") as alice:
            assert root.put("/v1/accounts/alice",
                            json={"is_member": True, "quota_remaining": 3}).status_code == 200
            made = alice.post("/v1/tasks", json={"kind": "noop", "subtasks": [{"n": 1}] * 3})
            assert made.status_code == 201, made.text
            task_id = made.json()["id"]
            assert alice.get(f"/v1/tasks/{task_id}/subtasks").status_code == 200
            assert alice.post(f"/v1/tasks/{task_id}/cancel").status_code == 200
            assert root.get("/v1/status").status_code == 200
            # A configured queue no daemon has served yet: its row first, then the pause.
            paused = root.post("/v1/queues/standard/pause")
            assert paused.status_code == 200 and paused.json()["paused"], paused.text
            assert root.post("/v1/queues/standard/resume").status_code == 200
            assert root.get("/v1/queues").status_code == 200
        # The console reads every page and writes its audit log as the API role.
        console = sign_in(api.url, settings.api, "root", admin=True)
        try:
            for page in ("/console/overview", "/console/tasks", f"/console/tasks/{task_id}",
                         "/console/errors", "/console/audit"):
                assert console.get(page).status_code == 200, page
            other = alice_task(api.url, settings)
            form = console.get(f"/console/tasks/{other}/confirm?action=priority&priority=3")
            done = console.post(f"/console/tasks/{other}/priority",
                                data={"csrf": csrf_of(form.text), "priority": "3"})
            assert done.status_code == 200, done.text
        finally:
            console.close()
        assert scalar(database_url, "SELECT action FROM taskd.console_audit") == "set_priority"
    api = roles["api"]
    _refused(api, "UPDATE taskd.queue_controls SET paused = true")
    _refused(api, "DELETE FROM taskd.tasks")
    _refused(api, "DELETE FROM taskd.quota_ledger")
    _refused(api, "UPDATE taskd.quota_ledger SET delta = 100")
    _refused(api, "UPDATE taskd.executors SET status = 'dead'")
    _refused(api, "INSERT INTO taskd.error_logs (error_type, error_message) VALUES ('x', 'y')")
    _refused(api, "CREATE TABLE taskd.intruder (id int)")
    _refused(api, "TRUNCATE taskd.subtasks")
    _refused(api, "DROP TABLE taskd.tasks")


def test_the_executor_role_runs_a_daemon_and_can_do_nothing_else(
    roles: dict[str, str], database_url: str
) -> None:
    with psycopg.connect(roles["api"], autocommit=True) as api:
        api.execute("SELECT taskd.submit_task('standard', 'noop', %s::jsonb)",
                    ('[{"n": 1}, {"n": 2}]',))
    with daemons(roles["executor"], 1, TASKD_POLL_INTERVAL="0.5", TASKD_RESCUE_INTERVAL="0.5"):
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM taskd.subtasks "
                                "WHERE status = 'completed'") == 2, timeout=30,
                 message="the executor role completes the subtasks")
        assert scalar(database_url, "SELECT status FROM taskd.tasks") == "completed"
    ex = roles["executor"]
    _refused(ex, "SELECT taskd.submit_task('standard', 'noop', '[{}]'::jsonb)")
    _refused(ex, "INSERT INTO taskd.tasks (queue, kind, total) VALUES ('standard', 'noop', 1)")
    _refused(ex, "INSERT INTO taskd.accounts (user_id) VALUES ('mallory')")
    _refused(ex, "UPDATE taskd.accounts SET is_member = true")
    _refused(ex, "DELETE FROM taskd.quota_ledger")
    _refused(ex, "CREATE TABLE taskd.intruder (id int)")
    _refused(ex, "TRUNCATE taskd.tasks")
    # The statistics pass: the gauges and the counters that SQL keeps, folded.
    with psycopg.connect(ex, autocommit=True) as conn:
        for name in ("stats_snapshot", "fold_queue_counters", "tasks_waiting_on_dependencies"):
            conn.execute(sql.SQL(load_queries()[name]))  # type: ignore[arg-type]


def test_the_executor_role_can_refund_a_failed_api_task(
    roles: dict[str, str], database_url: str
) -> None:
    """The refund trigger runs with the executor's rights when a daemon fails a task."""
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("INSERT INTO taskd.accounts (user_id, is_member, quota_remaining) "
                      "VALUES ('alice', true, 0)")
        task_id = admin.execute("SELECT taskd.submit_task_for_user('alice', 'standard', 'fail',"
                                " %s::jsonb, max_attempts => 1)",
                                ('[{"permanent": true}]',)).fetchone()[0]  # type: ignore[index]
        # As the API charges it: the task's cost and its deduction in the ledger.
        admin.execute("UPDATE taskd.tasks SET quota_cost = 1 WHERE id = %s", (task_id,))
        admin.execute("INSERT INTO taskd.quota_ledger (user_id, task_id, delta, reason)"
                      " VALUES ('alice', %s, -1, 'deduct')", (task_id,))
    with daemons(roles["executor"], 1, TASKD_POLL_INTERVAL="0.5"):
        wait_for(lambda: scalar(database_url, "SELECT status FROM taskd.tasks") == "failed",
                 timeout=30, message="the task failed")
    assert scalar(database_url, "SELECT quota_remaining FROM taskd.accounts") == 1
    assert scalar(database_url, "SELECT count(*) FROM taskd.quota_ledger"
                  " WHERE reason = 'refund' AND refund_of IS NOT NULL") == 1


def test_the_client_role_submits_within_the_servers_rules_and_nothing_more(
    roles: dict[str, str], database_url: str
) -> None:
    """The least-privileged SQL client: it cannot lift the payload limit, cannot submit as a
    user, cannot write a table; it can submit, read its task, reprioritise it, wait for its
    end and read its result URLs, all as docs/sql.md says."""
    client = roles["client"]
    three_mib = '[{"blob": "' + "x" * (3 * 1024 * 1024) + '"}]'
    before = _counts(database_url)
    with psycopg.connect(client, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedFunction):  # no such argument
            conn.execute("SELECT taskd.submit_task('standard', 'noop', %s::jsonb,"
                         " max_payload_bytes => 2147483647)", (three_mib,))
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="larger than 1048576"):
            conn.execute("SELECT taskd.submit_task('standard', 'noop', %s::jsonb)",
                         (three_mib,))
        with pytest.raises(psycopg.errors.UndefinedFunction):
            conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]',"
                         " user_id => 'mallory')")
        for statement in (
            "SELECT taskd.submit_task_for_user('mallory', 'standard', 'noop', '[{}]')",
            "SELECT taskd.api_create_task('mallory', 'standard', 'noop', '[{}]', '', 0, '{}',"
            " 1, NULL, NULL, NULL, 1)",
            "UPDATE taskd.limits SET max_payload_bytes = 2147483647",
            "INSERT INTO taskd.tasks (queue, kind, total) VALUES ('standard', 'noop', 1)",
            "UPDATE taskd.subtasks SET priority = 1000",
            "SELECT * FROM taskd.accounts",
            "SELECT * FROM taskd.quota_ledger",
            "INSERT INTO taskd.queue_controls (queue) VALUES ('mine')",
            "UPDATE taskd.queue_controls SET paused = true",
            "INSERT INTO taskd.queue_counter_deltas (queue, counter) VALUES ('x', 'y')",
            "UPDATE taskd.queue_counters SET value = 0",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)  # type: ignore[arg-type]
    assert _counts(database_url) == before
    with psycopg.connect(client, autocommit=True) as conn:
        conn.execute("LISTEN taskd_task_end")
        task_id = conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{\"n\": 1,"
                               " \"image_url\": \"https://img.invalid/1.png\"}, {\"n\": 2}]')"
                               ).fetchone()[0]  # type: ignore[index]
        assert conn.execute("SELECT user_id FROM taskd.tasks WHERE id = %s",
                            (task_id,)).fetchone() == (None,)
        assert conn.execute("SELECT taskd.set_task_priority(%s, 50)",
                            (task_id,)).fetchone() == (2,)
        assert conn.execute("SELECT count(*), min(priority) FROM taskd.task_subtasks(%s)",
                            (task_id,)).fetchone() == (2, 50)
        with daemons(roles["executor"], 1, TASKD_POLL_INTERVAL="0.5"):
            heard = next(conn.notifies(timeout=30, stop_after=1))
        assert int(heard.payload) == task_id
        assert conn.execute("SELECT status FROM taskd.tasks WHERE id = %s",
                            (task_id,)).fetchone() == ("completed",)
        assert conn.execute("SELECT taskd.task_result_urls(%s)", (task_id,)).fetchone() == (
            ["https://img.invalid/1.png", None],)
        # The daemon made the queue known; the client may pause and resume it (docs/sql.md).
        assert conn.execute("SELECT taskd.pause_queue('standard')").fetchone() == (True,)
        assert conn.execute("SELECT paused FROM taskd.queue_controls "
                            "WHERE queue = 'standard'").fetchone() == (True,)
        assert conn.execute("SELECT taskd.resume_queue('standard')").fetchone() == (True,)
        # A duplicate of a unique key returns the task, and is counted for /metrics.
        unique = "SELECT taskd.submit_task('standard', 'noop', '[{}]', unique_key => 'k1')"
        assert conn.execute(unique).fetchone() == conn.execute(unique).fetchone()
    assert scalar(database_url, "SELECT count(*) FROM taskd.queue_counter_deltas") == 1


def _counts(url: str) -> tuple[int, int]:
    return (scalar(url, "SELECT count(*) FROM taskd.tasks"),
            scalar(url, "SELECT count(*) FROM taskd.subtasks"))


def test_the_readonly_role_runs_taskd_status_and_can_write_nothing(
    roles: dict[str, str], database_url: str
) -> None:
    env = {"TASKD_DATABASE_URL": roles["readonly"], "PATH": "/usr/bin:/bin"}
    for args in (["status", "--json"], ["tasks", "list", "--json"]):
        done = subprocess.run([sys.executable, "-m", "taskd", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    ro = roles["readonly"]
    for statement in ("SELECT taskd.submit_task('standard', 'noop', '[{}]'::jsonb)",
                      "UPDATE taskd.subtasks SET status = 'failed'",
                      "DELETE FROM taskd.executors",
                      "SELECT taskd.pause_queue('standard')",
                      "INSERT INTO taskd.accounts (user_id) VALUES ('mallory')",
                      "CREATE TABLE taskd.intruder (id int)"):
        _refused(ro, statement)
    assert conninfo_to_dict(ro)["user"].endswith("_readonly_login")


def test_task_end_webhooks_work_under_the_least_privileged_roles(
    roles: dict[str, str], database_url: str
) -> None:
    """The executor role's daemon writes the outbox row as the task fails and delivers it;
    the API role's admin redelivers a dead one; a SQL client may read the outbox only."""
    from taskd.queue.migrations import migrate_blocking
    from tests.webhook_receiver import webhook_receiver

    migrate_blocking(database_url, allow_http_private=True)
    with webhook_receiver() as receiver, psycopg.connect(roles["client"],
                                                         autocommit=True) as client:
        client.execute("SELECT taskd.submit_task('standard', 'fail', '[{\"permanent\": true}]',"
                       " notify_url => %s)", (receiver.url("/ok"),))
        with daemons(roles["executor"], 1, TASKD_POLL_INTERVAL="0.5",
                     TASKD_NOTIFICATIONS__SIGNING_KEY="k",
                     TASKD_NOTIFICATIONS__POLL_INTERVAL="0.2"):
            wait_for(lambda: scalar(database_url, "SELECT count(*) FROM taskd.notifications"
                                    " WHERE status = 'delivered'") == 1, timeout=30,
                     message="the executor role writes and delivers the notification")
        assert len(receiver.received()) == 1
        assert client.execute("SELECT event FROM taskd.notifications").fetchall() == [
            ("failed",)]
    _refused(roles["client"], "UPDATE taskd.notifications SET status = 'pending'")
    _refused(roles["readonly"], "UPDATE taskd.notifications SET status = 'pending'")
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("UPDATE taskd.notifications SET status = 'dead'")
    from taskd.queue.queries import query

    with psycopg.connect(roles["api"], autocommit=True) as api:  # what the admin route runs
        redelivered = api.execute(query("redeliver_notifications"),
                                  {"ids": None, "task_id": None}).fetchall()
        assert len(redelivered) == 1
