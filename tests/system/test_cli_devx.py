"""The taskd command's rough edges, as a newcomer meets them: --version, --help, migrate's
output, accounts, retry and cancel of ended tasks, why a waited-for task failed, piped output,
and `taskd api` without its extra."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from taskd.queue import migrations
from taskd.queue.store import Store
from taskd.types import Outcome
from tests.system.daemons import daemons

pytestmark = pytest.mark.system


def taskd(*args: str, python: list[str] | None = None, **env: str,
          ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    clean.pop("COLUMNS", None)
    return subprocess.run(
        [*(python or [sys.executable, "-m", "taskd"]), *args], env={**clean, **env},
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_version_needs_no_settings_and_no_database() -> None:
    done = taskd("--version", TASKD_QUEUES__STANDARD__MAX="abc")
    assert (done.returncode, done.stdout, done.stderr) == (0, "taskd 0.1.0\n", "")


def test_help_shows_the_options_as_a_person_types_them() -> None:
    done = taskd("--help")
    assert done.returncode == 0, done.stderr
    assert "--version" in done.stdout and "accounts" in done.stdout
    for junk in ("<bool>", "BOOLEAN", "[default: False]", "--no-version"):
        assert junk not in done.stdout, done.stdout
    status = taskd("status", "--help")
    for junk in ("<bool>", "BOOLEAN", "--no-json", "--no-watch"):
        assert junk not in status.stdout, status.stdout


def test_migrate_prints_what_it_did_on_stdout(empty_database_url: str) -> None:
    first = taskd("migrate", TASKD_DATABASE_URL=empty_database_url)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    latest = migrations.migrations()[-1]
    assert lines[0] == "applied 0001_initial"
    assert lines[-4] == f"applied {latest.version:04d}_{latest.name}"
    assert lines[-3] == "limits: max_payload_bytes = 1048576"
    assert lines[-2] == "notifications: allow_http_private = false, routes = none"
    assert lines[-1] == f"schema is up to date (version {latest.version})"
    again = taskd("migrate", TASKD_DATABASE_URL=empty_database_url)
    assert again.stdout == ("limits: max_payload_bytes = 1048576\n"
                            "notifications: allow_http_private = false, routes = none\n"
                            f"schema is up to date (version {latest.version})\n")
    assert again.stderr == ""


def test_accounts_put_and_show(database_url: str) -> None:
    missing = taskd("accounts", "show", "alice", TASKD_DATABASE_URL=database_url)
    assert missing.returncode == 1
    assert missing.stderr.strip() == ("taskd: error: user 'alice' not found: create the "
                                      "account with `taskd accounts put alice --quota N`")
    created = taskd("accounts", "put", "alice", "--quota", "100",
                    TASKD_DATABASE_URL=database_url)
    assert created.returncode == 0, created.stderr
    assert created.stdout == "account alice: member, quota 100 (created)\n"
    # Without --member/--no-member the membership stays as it is.
    taskd("accounts", "put", "alice", "--quota", "5", "--no-member",
          TASKD_DATABASE_URL=database_url)
    updated = taskd("accounts", "put", "alice", "--quota", "7", TASKD_DATABASE_URL=database_url)
    assert updated.stdout == "account alice: not a member, quota 7\n"
    shown = taskd("accounts", "show", "alice", "--json", TASKD_DATABASE_URL=database_url)
    assert json.loads(shown.stdout)["quota_remaining"] == 7
    for bad in (["--quota", "-1"], ["--quota", str(2**31)]):
        refused = taskd("accounts", "put", "bob", *bad, TASKD_DATABASE_URL=database_url)
        assert refused.returncode == 2 and "quota_remaining" in refused.stderr, refused.stderr
    control = taskd("accounts", "put", "bo\tb", "--quota", "1", TASKD_DATABASE_URL=database_url)
    assert control.returncode == 2 and "user id" in control.stderr, control.stderr


@pytest.mark.anyio
async def test_retry_and_cancel_of_an_ended_task_exit_1_saying_why(
    store: Store, database_url: str,
) -> None:
    task_id = await store.submit("standard", "noop", [{}])
    [claimed] = await store.claim_subtasks("standard", "x", 1, 60)
    await store.record_outcomes("x", [Outcome(claimed.id, 1, "completed")])
    cancel = taskd("tasks", "cancel", str(task_id), TASKD_DATABASE_URL=database_url)
    assert (cancel.returncode, cancel.stdout) == (1, "")
    assert cancel.stderr.strip() == f"taskd: error: task {task_id} has already ended (completed)"
    retry = taskd("tasks", "retry", str(task_id), TASKD_DATABASE_URL=database_url)
    assert (retry.returncode, retry.stdout) == (1, "")
    assert retry.stderr.strip() == f"taskd: error: task {task_id} has no failed subtasks"


@pytest.mark.slow
def test_submit_wait_on_a_failed_task_says_how_many_failed_and_the_first_error(
    database_url: str,
) -> None:
    with daemons(database_url, 1, TASKD_QUEUES='{"standard": {}}'):
        done = taskd("submit", "--kind", "fail", "--payload",
                     '{"permanent": true, "message": "no such image"}', "--count", "3",
                     "--wait", TASKD_DATABASE_URL=database_url)
    assert done.returncode == 1, done.stderr
    task_id = done.stdout.splitlines()[0]
    assert re.fullmatch(
        rf"task {task_id} failed: 3 of 3 subtasks failed; the first \(subtask \d+\): "
        r"PermanentError: no such image", done.stderr.strip().splitlines()[-1]), done.stderr


@pytest.mark.anyio
async def test_piped_status_is_not_cut_at_80_columns(store: Store, database_url: str) -> None:
    queue = "a-queue-with-a-name-long-enough-to-be-cut-at-eighty-columns"
    await store.submit(queue, "kind-with-a-long-name-too", [{}])
    done = taskd("status", TASKD_DATABASE_URL=database_url)
    assert done.returncode == 1, done.stderr  # pending work and no executor
    assert queue in done.stdout and "…" not in done.stdout, done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) > 80


def test_api_without_its_extra_says_which_extra_in_one_line() -> None:
    # As in a venv without fastapi: the import fails the way it would.
    python = [sys.executable, "-c", "import sys; sys.modules['fastapi'] = None; "
              "sys.argv[0] = 'taskd'; from taskd.cli import main; main()"]
    for args in (["api"], ["api", "token", "--user", "alice"]):
        done = taskd(*args, python=python,
                     TASKD_API__JWT_SECRET="a-secret-that-is-long-enough-0123456789")
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == ("taskd: error: taskd api needs the api extra: "
                                       "pip install 'taskd[api]' (no module named 'fastapi')")
