"""Migrations: idempotent, safe concurrently, equal to schema.sql; the version check."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

from taskd.errors import SchemaMissing, SchemaOutdated, SchemaTooNew
from taskd.queue import migrations
from taskd.queue.store import Store

pytestmark = pytest.mark.anyio

# The structure of schema taskd, as catalog rows that can be compared between databases.
STRUCTURE = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity
          FROM information_schema.columns WHERE table_schema = 'taskd'
         ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace = 'taskd'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
         WHERE schemaname = 'taskd' ORDER BY 1, 2""",
    "functions": """
        SELECT proname, pg_get_functiondef(oid) FROM pg_proc
         WHERE pronamespace = 'taskd'::regnamespace ORDER BY 1""",
    "triggers": """
        SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger
         WHERE tgrelid::regclass::text LIKE 'taskd.%' AND NOT tgisinternal ORDER BY 1""",
    "versions": "SELECT version, name FROM taskd.schema_migrations ORDER BY 1",
    "storage": """
        SELECT relname, reloptions FROM pg_class
         WHERE relnamespace = 'taskd'::regnamespace AND reloptions IS NOT NULL ORDER BY 1""",
}


def structure(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {name: conn.execute(q).fetchall() for name, q in STRUCTURE.items()}  # type: ignore[arg-type]


async def test_migrating_an_empty_database_equals_schema_sql(
    empty_database_url: str, database_url: str
) -> None:
    # database_url was migrated from the numbered files; load schema.sql into the empty one.
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(migrations.canonical_schema().encode())
    canonical, migrated = structure(empty_database_url), structure(database_url)
    assert canonical["columns"], "the comparison must see the schema"
    for part in STRUCTURE:
        assert canonical[part] == migrated[part], f"schema.sql differs in {part}"


async def test_migrate_twice_is_a_no_op(empty_database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(empty_database_url, autocommit=True) as c:
        first = await migrations.migrate(c)
        assert [m.version for m in first] == [m.version for m in migrations.migrations()]
        before = structure(empty_database_url)
        assert await migrations.migrate(c) == []
    assert structure(empty_database_url) == before


def test_concurrent_migrate_commands_both_succeed(empty_database_url: str) -> None:
    env = {"TASKD_DATABASE_URL": empty_database_url, "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "taskd", "migrate"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    said = sorted(out.strip().splitlines()[0 if out.startswith("applied") else -1]
                  for out, _ in outputs)
    # One process applied every migration (its first line names the first); the other waited
    # and found nothing left to do.
    latest = migrations.migrations()[-1]
    assert said == ["applied 0001_initial",
                    f"schema is up to date (version {latest.version})"], outputs
    assert said[1].startswith("schema is up to date"), said
    with psycopg.connect(empty_database_url) as conn:
        rows = conn.execute("SELECT version FROM taskd.schema_migrations ORDER BY 1").fetchall()
    assert rows == [(m.version,) for m in migrations.migrations()]


async def test_schema_check_names_taskd_migrate(empty_database_url: str) -> None:
    with pytest.raises(SchemaMissing, match="taskd migrate"):
        await Store.open(empty_database_url)


async def test_schema_check_refuses_older_and_newer_schemas(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO taskd.schema_migrations (version, name) VALUES (999, 'future')")
    with pytest.raises(SchemaTooNew, match="upgrade taskd"):
        await Store.open(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM taskd.schema_migrations")
        conn.execute("INSERT INTO taskd.schema_migrations (version, name) VALUES (0, 'old')")
    with pytest.raises(SchemaOutdated, match="taskd migrate"):
        await Store.open(database_url)


def migrated_to(url: str, version: int) -> None:
    """Apply the migrations up to ``version``, as a database of that taskd release has them."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(migrations.BOOTSTRAP.encode())
        for m in migrations.migrations():
            if m.version <= version:
                conn.execute(m.sql.encode())
                conn.execute("INSERT INTO taskd.schema_migrations (version, name)"
                             " VALUES (%s, %s)", (m.version, m.name))


async def test_upgrading_from_the_previous_version_keeps_its_rows(
    empty_database_url: str, database_url: str
) -> None:
    """A database one version behind, with work in it, migrates to the latest in place."""
    latest = migrations.migrations()[-1]
    migrated_to(empty_database_url, migrations.migrations()[-2].version)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{\"i\": 1}, {\"i\": 2}]')")
        conn.execute("SELECT taskd.submit_task('other', 'noop', '[{\"i\": 3}]')")
    async with await psycopg.AsyncConnection.connect(empty_database_url, autocommit=True) as c:
        applied = await migrations.migrate(c)
        assert [m.version for m in applied] == [latest.version]
        assert await migrations.check_schema(c) == latest.version
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT t.queue, t.total, count(s.id) FROM taskd.tasks t"
                            " JOIN taskd.subtasks s ON s.task_id = t.id GROUP BY t.id"
                            " ORDER BY t.id").fetchall()
        assert rows == [("standard", 2, 2), ("other", 1, 1)]
        # And the upgraded functions and constraints work.
        conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]')")
        conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{}, {}]')")
        assert conn.execute("SELECT count(*) FROM taskd.subtasks").fetchone() == (6,)
    # database_url was migrated from nothing: the upgrade ends in the same structure.
    assert structure(empty_database_url) == structure(database_url)


async def test_upgrading_from_version_5_records_each_tasks_subtask_range(
    empty_database_url: str,
) -> None:
    """Version 6 records each task's id range from the subtasks it has (none: NULL)."""
    migrated_to(empty_database_url, 5)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{\"i\": 1}, {\"i\": 2}]')")
        # A task whose subtasks retention already deleted.
        gone = conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]')").fetchone()
        conn.execute("DELETE FROM taskd.subtasks WHERE task_id = %s", gone)
    async with await psycopg.AsyncConnection.connect(empty_database_url, autocommit=True) as c:
        applied = await migrations.migrate(c)
        assert [m.version for m in applied] == [m.version for m in migrations.migrations()
                                                if m.version >= 6]
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        ranges = conn.execute("SELECT t.first_subtask_id, t.last_subtask_id, min(s.id), max(s.id)"
                              " FROM taskd.tasks t LEFT JOIN taskd.subtasks s ON s.task_id = t.id"
                              " GROUP BY t.id ORDER BY t.id").fetchall()
        assert ranges[0][:2] == ranges[0][2:] and ranges[0][0] is not None
        assert ranges[1] == (None, None, None, None)


# submit_task as it is after every migration (versions 9, 10, 13 and 14 replaced it), and as
# version 10 left it.
NEW_SUBMIT = ("taskd.submit_task(text, text, jsonb, text, integer, jsonb, integer, "
              "timestamptz, text, text, text, bigint[], text, text[])")
V10_SUBMIT = ("taskd.submit_task(text, text, jsonb, text, integer, jsonb, integer, "
              "timestamptz, text)")


def test_versions_9_and_10_keep_who_may_execute_submit_task(empty_database_url: str) -> None:
    """Versions 9, 10 and 14 replace submit_task (new arguments): roles that could execute the old
    one can execute the new one, and PUBLIC still cannot when it could not before."""
    role = f"taskd_submitter_{uuid.uuid4().hex[:8]}"
    migrated_to(empty_database_url, 7)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        try:
            conn.execute("REVOKE ALL ON FUNCTION taskd.submit_task(text, text, jsonb, text, "
                         "integer, jsonb, text, integer, timestamptz, integer) FROM PUBLIC")
            conn.execute(sql.SQL(
                "GRANT EXECUTE ON FUNCTION taskd.submit_task(text, text, jsonb, text, integer, "
                "jsonb, text, integer, timestamptz, integer) TO {}").format(sql.Identifier(role)))
            applied = anyio.run(_migrate, empty_database_url)
            assert [m.version for m in applied][:3] == [8, 9, 10]
            may = conn.execute(
                "SELECT has_function_privilege(%s, %s::regprocedure, 'EXECUTE'),"
                " has_function_privilege('public', %s::regprocedure, 'EXECUTE')",
                (role, NEW_SUBMIT, NEW_SUBMIT)).fetchone()
            assert may == (True, False)
        finally:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


SUBMIT_FOR_USER = ("taskd.submit_task_for_user(text, text, text, jsonb, text, integer, jsonb, "
                   "integer, timestamptz, text, text, text, bigint[], text, text[])")
API_CREATE_TASK = ("taskd.api_create_task(text, text, text, jsonb, text, integer, jsonb, "
                   "integer, text, text, text[], integer, integer)")


def test_version_21_lets_whoever_may_set_a_tasks_user_create_in_one_call(
    empty_database_url: str,
) -> None:
    """api_create_task (version 21): the roles that may execute submit_task_for_user (the API
    role of a database that ran roles.sql) may execute it after the upgrade; PUBLIC may not."""
    role = f"taskd_api_{uuid.uuid4().hex[:8]}"
    migrated_to(empty_database_url, 20)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        try:
            conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(
                sql.SQL(SUBMIT_FOR_USER), sql.Identifier(role)))
            applied = anyio.run(_migrate, empty_database_url)
            assert [m.version for m in applied][:1] == [21]
            may = conn.execute(
                "SELECT has_function_privilege(%s, %s::regprocedure, 'EXECUTE'),"
                " has_function_privilege('public', %s::regprocedure, 'EXECUTE')",
                (role, API_CREATE_TASK, API_CREATE_TASK)).fetchone()
            assert may == (True, False)
        finally:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


async def _migrate(url: str) -> list[migrations.Migration]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        return await migrations.migrate(c)


def test_upgrading_to_rules_as_meant_keeps_grants_and_matches_refunds_to_charges(
    empty_database_url: str,
) -> None:
    """rules_as_meant (version 10) replaces submit_task: who could execute it still can (and
    PUBLIC still cannot, when roles.sql had taken it away); each old refund names its task's
    deduction."""
    role = f"t{uuid.uuid4().hex[:8]}_old_submitter"
    upgrade = next(m for m in migrations.migrations() if m.name == "rules_as_meant")
    migrated_to(empty_database_url, upgrade.version - 1)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        try:
            old = ("taskd.submit_task(text, text, jsonb, text, integer, jsonb, text, integer,"
                   " timestamptz, integer, text)")
            conn.execute(f"REVOKE ALL ON FUNCTION {old} FROM PUBLIC")  # type: ignore[arg-type]
            conn.execute(sql.SQL(f"GRANT EXECUTE ON FUNCTION {old} TO {{}}").format(  # type: ignore[arg-type]
                sql.Identifier(role)))
            conn.execute("INSERT INTO taskd.accounts (user_id, quota_remaining)"
                         " VALUES ('alice', 0)")
            task = conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]',"
                                " user_id => 'alice')").fetchone()
            conn.execute("INSERT INTO taskd.quota_ledger (user_id, task_id, delta, reason)"
                         " VALUES ('alice', %(t)s, -1, 'deduct'), ('alice', %(t)s, 1, 'refund'),"
                         " ('alice', NULL, 5, 'adjust')", {"t": task[0] if task else None})
            conn.execute(upgrade.sql.encode())
            new = V10_SUBMIT
            can = conn.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE'),"
                               " has_function_privilege('public', %s, 'EXECUTE')",
                               (role, new, new)).fetchone()
            assert can == (True, False)
            refunds = conn.execute(
                "SELECT r.refund_of = c.id FROM taskd.quota_ledger r JOIN taskd.quota_ledger c"
                " ON c.task_id = r.task_id AND c.reason = 'deduct' WHERE r.reason = 'refund'"
            ).fetchall()
            assert refunds == [(True,)]
            assert conn.execute("SELECT max_payload_bytes FROM taskd.limits").fetchone() == (
                1048576,)
        finally:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_churning_tables_vacuum_after_a_fixed_number_of_dead_rows(
    empty_database_url: str,
) -> None:
    # A database of version 10 gets the storage parameters of 0016 on upgrade: autovacuum of
    # subtasks and tasks no longer waits for 20 % of their (history-sized) live rows.
    migrated_to(empty_database_url, 10)

    def options() -> dict[str, set[str]]:
        with psycopg.connect(empty_database_url) as conn:
            return {r[0]: set(r[1] or ()) for r in conn.execute(
                "SELECT relname, reloptions FROM pg_class"
                " WHERE oid IN ('taskd.subtasks'::regclass, 'taskd.tasks'::regclass)")}

    assert options() == {"subtasks": set(), "tasks": set()}
    anyio.run(_migrate, empty_database_url)
    after = options()
    for table, threshold in (("subtasks", 20000), ("tasks", 2000)):
        assert {"autovacuum_vacuum_scale_factor=0", f"autovacuum_vacuum_threshold={threshold}",
                "autovacuum_vacuum_insert_scale_factor=0",
                "autovacuum_vacuum_cost_delay=0"} <= after[table], after


def test_upgrading_to_the_sliding_rate_window_keeps_each_queues_controls(
    empty_database_url: str,
) -> None:
    # Version 17 replaces the aligned window's counter with the recent claims: a queue's pause
    # and rate limit stay; its window starts empty, and the claim records in it.
    migrated_to(empty_database_url, 16)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO taskd.queue_controls (queue, paused, rate_limit, rate_period,"
                     " rate_window_start, rate_window_count)"
                     " VALUES ('standard', false, 20, 1, now(), 7), ('render', true, NULL, NULL,"
                     " NULL, 0)")
    anyio.run(_migrate, empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT queue, paused, rate_limit, rate_period, rate_claimed_at, rate_claimed"
            " FROM taskd.queue_controls ORDER BY queue").fetchall() == [
            ("render", True, None, None, [], []), ("standard", False, 20, 1, [], [])]
        row = conn.execute(
            "SELECT * FROM taskd.rate_window_add('{}', '{}', now(), 1, 3)").fetchone()
        assert row is not None and row[1] == [3]


async def test_upgrading_to_maintenance_rounds_makes_the_first_round_due_at_once(
    empty_database_url: str,
) -> None:
    """Version 19: the fleet's rescuer round, due from the migration on (the first daemon of
    the new version to ask makes a pass at once)."""
    migrated_to(empty_database_url, 16)
    async with await psycopg.AsyncConnection.connect(empty_database_url, autocommit=True) as c:
        applied = await migrations.migrate(c)
        assert 19 in [m.version for m in applied]
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT name, rounds, taken_by, next_at <= now()"
                            " FROM taskd.maintenance_rounds").fetchall()
    assert rows == [("rescue", 0, None, True)]
