"""Helpers for the chaos test: a PostgreSQL the test owns, an audit of every status change,
daemons supervised like systemd would, and the end-state checks.

The server is the embedded one from the ``pgserver`` wheel in a temporary directory of the
test's own, never the shared one: the test stops and starts it.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.system.daemons import DaemonProcess

# Every status change of a subtask, written by a row trigger in the test's database, so that
# the test can show each outcome was recorded once and never overwritten.
AUDIT = """
CREATE TABLE public.transitions (
    id            bigserial PRIMARY KEY,
    subtask_id    bigint NOT NULL,
    old_status    text NOT NULL,
    new_status    text NOT NULL,
    old_attempt   integer NOT NULL,
    new_attempt   integer NOT NULL,
    old_locked_by text,
    at            timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION public.audit_subtask() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.transitions
           (subtask_id, old_status, new_status, old_attempt, new_attempt, old_locked_by)
    VALUES (NEW.id, OLD.status, NEW.status, OLD.attempt, NEW.attempt, OLD.locked_by);
    RETURN NULL;
END;
$$;
CREATE TRIGGER audit_subtask AFTER UPDATE ON taskd.subtasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION public.audit_subtask();
"""


class OwnedPostgres:
    """An embedded PostgreSQL in a temporary directory that this test may stop and start."""

    def __init__(self) -> None:
        import pgserver

        self.data_dir = Path(tempfile.mkdtemp(prefix="taskd-chaos-"))
        self.server = pgserver.get_server(self.data_dir, cleanup_mode="delete")
        info = self.server.get_postmaster_info()
        self.socket_dir = info.socket_dir
        self.url: str = self.server.get_uri()

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; ``immediate`` is a crash: no checkpoint, recovery at start."""
        self._pg_ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        """Start it again on the same data directory and socket (same connection string)."""
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}",
                     "-l", str(self.server.log), "start")

    def running(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def close(self) -> None:
        # pgserver only stops the process it started itself, so a restarted server is
        # stopped here before it deletes the directory.
        if self.running():
            self.stop("fast")
        self.server.cleanup()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@dataclass
class Supervisor:
    """Runs daemons the way systemd's ``Restart=`` would: a dead one is started again, with
    the same executor id, after ``restart_delay`` seconds."""

    url: str
    env: dict[str, str]
    ids: list[str]
    restart_delay: float = 0.5
    current: dict[str, DaemonProcess] = field(default_factory=dict)
    every: list[DaemonProcess] = field(default_factory=list)
    kills: int = 0
    # Exits the test did not cause: (executor id, exit code, signal the daemon logged or None).
    exits: list[tuple[str, int | None, str | None]] = field(default_factory=list)
    _down_since: dict[str, float] = field(default_factory=dict)

    def start_all(self) -> None:
        for executor_id in self.ids:
            self._start(executor_id)
        for d in self.current.values():
            d.wait_ready(timeout=60)

    def _start(self, executor_id: str) -> None:
        d = DaemonProcess(self.url, executor_id, self.env)
        self.current[executor_id] = d
        self.every.append(d)

    def kill_one(self, rng: random.Random) -> str:
        """``kill -9`` a running daemon chosen at random; return its executor id."""
        alive = [i for i, d in self.current.items() if d.proc.poll() is None]
        victim = rng.choice(alive)
        self.current[victim].kill()
        self.kills += 1
        self._down_since[victim] = time.monotonic()
        return victim

    def tick(self) -> None:
        """Notice daemons that exited on their own; restart every dead one after the delay."""
        now = time.monotonic()
        for executor_id, d in self.current.items():
            if executor_id not in self._down_since and d.proc.poll() is not None:
                signals = [e.get("signal") for e in d.events()
                           if e.get("message") == "shutting down"]
                self.exits.append((executor_id, d.proc.returncode,
                                   signals[0] if signals else None))
                self._down_since[executor_id] = now
        for executor_id, since in list(self._down_since.items()):
            if now - since >= self.restart_delay:
                del self._down_since[executor_id]
                self.current[executor_id].close()
                self._start(executor_id)

    def settle(self, timeout: float = 60.0) -> None:
        """Restart what is down and wait until every daemon is ready."""
        deadline = time.monotonic() + timeout
        while self._down_since:
            assert time.monotonic() < deadline, "daemons did not come back"
            self.tick()
            time.sleep(0.05)
        for d in self.current.values():
            d.wait_ready(timeout=max(1.0, deadline - time.monotonic()))

    def stop_all(self, timeout: float = 60.0) -> list[int]:
        """SIGTERM every daemon and wait; return their exit codes."""
        live = [d for d in self.current.values() if d.proc.poll() is None]
        for d in live:
            d.signal(15)
        return [d.wait(timeout=timeout) for d in live]

    def close(self) -> None:
        for d in self.every:
            d.close()

    def events(self) -> list[dict[str, Any]]:
        return [e for d in self.every for e in d.events()]

    def logs_of_exits(self) -> str:
        out = []
        for d in self.every:
            if d.proc.returncode not in (None, 0, -9):
                out.append(f"--- {d.executor_id} (exit {d.proc.returncode})\n{d.log()[-4000:]}")
        return "\n".join(out)


def terminate_taskd_backends(url: str) -> int:
    """``pg_terminate_backend`` every connection a taskd process opened; return how many."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("""
            SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name LIKE 'taskd%%' AND pid <> pg_backend_pid()""").fetchone()
    assert row is not None
    return int(row[0])


def progress(url: str) -> Counter[str] | None:
    """Subtasks by status, or None while the database does not answer."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            rows = conn.execute(
                "SELECT status, count(*) FROM taskd.subtasks GROUP BY status").fetchall()
    except psycopg.OperationalError:
        return None
    return Counter({status: int(n) for status, n in rows})


# Each query returns the rows that break one promise; every one must come back empty.
VIOLATIONS: dict[str, str] = {
    "subtask not final": """
        SELECT id, status FROM taskd.subtasks
         WHERE status NOT IN ('completed', 'failed', 'cancelled')""",
    "lease left on a finished subtask": """
        SELECT id, locked_by FROM taskd.subtasks
         WHERE locked_by IS NOT NULL OR lease_expires_at IS NOT NULL""",
    "attempts over max_attempts": """
        SELECT id, attempt, max_attempts FROM taskd.subtasks WHERE attempt > max_attempts""",
    # A crash of its executor gives the attempt back (the rescuer counts crashes instead):
    # each crash allows one more execution, of an attempt number already executed.
    "more executions than attempts and crashes": """
        SELECT s.id, s.attempt, s.crashes, count(e.id) FROM taskd.subtasks s
          JOIN public.executions e ON e.subtask_id = s.id
         GROUP BY s.id, s.attempt, s.crashes HAVING count(e.id) > s.attempt + s.crashes""",
    "an execution of an attempt the subtask never reached": """
        SELECT e.subtask_id, e.attempt, s.attempt FROM public.executions e
          JOIN taskd.subtasks s ON s.id = e.subtask_id WHERE e.attempt > s.attempt""",
    "one attempt executed twice without a crash": """
        SELECT e.subtask_id, e.attempt, s.crashes, count(*) FROM public.executions e
          JOIN taskd.subtasks s ON s.id = e.subtask_id
         GROUP BY e.subtask_id, e.attempt, s.crashes HAVING count(*) > 1 + s.crashes""",
    "final outcome recorded other than once": """
        SELECT s.id, s.status, count(t.id) FROM taskd.subtasks s
          LEFT JOIN public.transitions t
                 ON t.subtask_id = s.id
                AND t.new_status IN ('completed', 'failed', 'cancelled')
         GROUP BY s.id, s.status HAVING count(t.id) <> 1""",
    "a finished subtask changed again": """
        SELECT subtask_id, old_status, new_status FROM public.transitions
         WHERE old_status IN ('completed', 'failed', 'cancelled')""",
    "completed result not from the attempt that held the lease": """
        SELECT s.id, s.attempt, s.result FROM taskd.subtasks s
         WHERE s.status = 'completed'
           AND NOT EXISTS (
               SELECT 1 FROM public.executions e
                WHERE e.subtask_id = s.id AND e.attempt = s.attempt
                  AND e.attempt = (s.result ->> 'attempt')::integer
                  AND e.pid = (s.result ->> 'pid')::integer
                  AND e.finished_at IS NOT NULL)""",
    "completed although its attempt was meant to fail": """
        SELECT s.id, s.attempt FROM taskd.subtasks s
         WHERE s.status = 'completed' AND s.id = ANY(%(doomed)s::bigint[])""",
    "task counters differ from their subtasks": """
        SELECT t.id, t.status, t.total, t.completed, t.failed, t.cancelled, c.*
          FROM taskd.tasks t
          JOIN (SELECT task_id, count(*) AS n,
                       count(*) FILTER (WHERE status = 'completed') AS completed,
                       count(*) FILTER (WHERE status = 'failed') AS failed,
                       count(*) FILTER (WHERE status = 'cancelled') AS cancelled
                  FROM taskd.subtasks GROUP BY task_id) c ON c.task_id = t.id
         WHERE (t.total, t.completed, t.failed, t.cancelled)
               IS DISTINCT FROM (c.n::int, c.completed::int, c.failed::int, c.cancelled::int)
            OR t.status <> CASE WHEN c.failed > 0 THEN 'failed'
                                WHEN c.cancelled > 0 THEN 'cancelled'
                                ELSE 'completed' END
            OR t.completed_at IS NULL""",
    "quota ledger does not balance": """
        SELECT a.user_id, a.quota_remaining, sum(l.delta) FROM taskd.accounts a
          JOIN taskd.quota_ledger l ON l.user_id = a.user_id
         GROUP BY a.user_id, a.quota_remaining HAVING a.quota_remaining <> sum(l.delta)""",
    "refund that does not give back exactly one charge of its task": """
        SELECT r.id, r.task_id, r.refund_of FROM taskd.quota_ledger r
          LEFT JOIN taskd.quota_ledger c ON c.id = r.refund_of
         WHERE r.reason = 'refund'
           AND (c.id IS NULL OR c.task_id IS DISTINCT FROM r.task_id OR c.delta <> -r.delta)""",
    "failed API task still holds a charge": """
        SELECT t.id FROM taskd.tasks t
          JOIN taskd.quota_ledger c ON c.task_id = t.id AND c.delta < 0
         WHERE t.status = 'failed'
           AND NOT EXISTS (SELECT 1 FROM taskd.quota_ledger r WHERE r.refund_of = c.id)""",
    "API task whose charges do not add up to its quota_cost": """
        SELECT t.id, t.quota_cost, -coalesce(sum(c.delta), 0) FROM taskd.tasks t
          LEFT JOIN taskd.quota_ledger c ON c.task_id = t.id AND c.delta < 0
         WHERE t.quota_cost > 0 GROUP BY t.id HAVING t.quota_cost <> -coalesce(sum(c.delta), 0)
        """,
    "API task that did not fail got a refund": """
        SELECT t.id, t.status FROM taskd.tasks t
          JOIN taskd.quota_ledger r ON r.task_id = t.id AND r.reason = 'refund'
         WHERE t.status <> 'failed' AND NOT EXISTS (
               SELECT 1 FROM taskd.quota_ledger c
                WHERE c.task_id = t.id AND c.delta < 0 AND c.id > r.refund_of)""",
}


def violations(url: str, doomed: list[int]) -> dict[str, list[tuple[Any, ...]]]:
    """Every promise that is broken, with up to five offending rows each."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for name, sql in VIOLATIONS.items():
            rows = conn.execute(sql, {"doomed": doomed}).fetchall()  # type: ignore[arg-type]
            if rows:
                found[name] = rows[:5]
    return found


def doomed_subtasks(url: str) -> list[int]:
    """Completed subtasks whose final attempt ``record`` was told to fail: there must be none."""
    from tests.handlers_for_tests import random_failure

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("""
            SELECT id, attempt, (payload ->> 'fail_rate')::float8 FROM taskd.subtasks
             WHERE status = 'completed' AND payload ? 'fail_rate'""").fetchall()
    return [sid for sid, attempt, rate in rows if random_failure(sid, attempt, rate)]


def log_totals(events: list[dict[str, Any]]) -> dict[str, int]:
    """What the daemons' JSON logs say about rescues and lost leases."""
    totals: Counter[str] = Counter()
    for e in events:
        message = e.get("message", "")
        if message == "rescued":
            totals["rescued_to_pending"] += int(e.get("returned", 0))
            totals["rescued_to_failed"] += int(e.get("failed", 0))
            totals["executors_marked_dead"] += len(e.get("dead_executors", []))
        elif message == "outcome dropped: lease lost":
            totals["outcomes_dropped_lease_lost"] += 1
        elif message == "lease lost, stopping the handler":
            totals["handlers_stopped_lease_lost"] += 1
    return dict(totals)


def format_summary(summary: dict[str, Any]) -> str:
    return "chaos summary: " + json.dumps(summary, sort_keys=True, default=str)
