-- The rescuer's statements. Each is one autocommit statement that every daemon may run at the
-- same time as the others (rows are taken FOR UPDATE SKIP LOCKED): maintenance needs no lock
-- and no leader, so a daemon that freezes mid-pass holds nothing that stops the others.

-- name: take_maintenance_round
-- The fleet's round: one daemon a round does the pass. Taken where next_at has come, and moved
-- to now() + interval; a daemon that loses the race (it waits for the winner's row lock, then
-- sees next_at in the future) takes nothing. The row is put back if someone deleted it.
-- Returns whether this daemon took the round, and the seconds until the next one may be taken
-- (from this statement's snapshot: a loser that waited for the winner may see the old next_at,
-- <= 0, and asks again shortly).
WITH taken AS (
    INSERT INTO taskd.maintenance_rounds AS r (name, next_at, taken_by, taken_at, rounds)
    VALUES (%(name)s, coalesce(%(now)s, now()) + make_interval(secs => %(interval)s),
            %(taken_by)s, coalesce(%(now)s, now()), 1)
    ON CONFLICT (name) DO UPDATE
       SET next_at = excluded.next_at, taken_by = excluded.taken_by,
           taken_at = excluded.taken_at, rounds = r.rounds + 1
     WHERE r.next_at <= coalesce(%(now)s, now())
    RETURNING r.next_at
)
SELECT EXISTS (SELECT FROM taken) AS taken,
       extract(epoch FROM coalesce((SELECT next_at FROM taken),
                                   (SELECT next_at FROM taskd.maintenance_rounds
                                     WHERE name = %(name)s))
                          - coalesce(%(now)s, now()))::float8 AS next_in;

-- name: rescue_expired_leases
-- Leases that expired: the executor crashed, froze or lost the database while it ran the
-- subtask. That is not evidence against the subtask, so it goes back to pending with its
-- attempt given back and one more crash counted. A subtask present in poison_after crashes is
-- a suspected poison pill (it may be what kills its executors): failed, with the reason, and
-- counted in error_logs as Poison. A subtask whose task was cancelled while it ran is
-- cancelled, not run again.
WITH expired AS (
    SELECT id
      FROM taskd.subtasks
     WHERE status = 'processing'
       AND lease_expires_at < coalesce(%(now)s, now())
     ORDER BY lease_expires_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), rescued AS (
    UPDATE taskd.subtasks s
       SET status = CASE WHEN s.cancel_requested THEN 'cancelled'
                         WHEN s.crashes + 1 >= %(poison_after)s THEN 'failed'
                         ELSE 'pending' END,
           error = CASE WHEN s.cancel_requested THEN 'cancelled'
                        WHEN s.crashes + 1 >= %(poison_after)s
                        THEN format('Poison: its executor crashed or stopped answering while '
                                    'running it, %%s times (last: executor %%s)',
                                    s.crashes + 1, s.locked_by)
                        ELSE s.error END,
           crashes = s.crashes + 1,
           attempt = CASE WHEN s.cancel_requested OR s.crashes + 1 >= %(poison_after)s
                          THEN s.attempt ELSE s.attempt - 1 END,
           completed_at = CASE WHEN s.cancel_requested OR s.crashes + 1 >= %(poison_after)s
                               THEN coalesce(%(now)s, now()) END,
           locked_by = NULL,
           lease_expires_at = NULL,
           updated_at = coalesce(%(now)s, now())
      FROM expired
     WHERE s.id = expired.id
    RETURNING s.id, s.task_id, s.queue, s.kind, s.status, s.cancel_requested
), poisoned AS (
    INSERT INTO taskd.error_logs AS e
           (error_type, error_message, count, queue, kind, first_occurred_at, last_occurred_at)
    SELECT 'Poison',
           format('its executor crashed or stopped answering while running it, %%s times',
                  %(poison_after)s),
           count(*), max(queue), max(kind), coalesce(%(now)s, now()), coalesce(%(now)s, now())
      FROM rescued
     WHERE status = 'failed'
    HAVING count(*) > 0
    ON CONFLICT (error_type, error_message) DO UPDATE
       SET count = e.count + excluded.count,
           queue = excluded.queue,
           kind = excluded.kind,
           last_occurred_at = excluded.last_occurred_at
)
SELECT id, task_id, queue, status FROM rescued;

-- name: queues_with_old_unstarted_tasks
-- Of these queues, each with its pending_timeout, those with a pending (unstarted) task created
-- before the cutoff: the only queues fail_unstarted_tasks can time anything out in. One
-- statement for every queue (tasks_unstarted_idx, LIMIT 1 each), so that a pass over idle
-- queues costs one statement, not one per queue.
SELECT q.queue
  FROM unnest(%(queues)s::text[], %(pending_timeouts)s::float8[]) AS q(queue, pending_timeout)
 CROSS JOIN LATERAL (
        SELECT 1
          FROM taskd.tasks t
         WHERE t.queue = q.queue
           AND t.status = 'pending'
           AND t.created_at < coalesce(%(now)s, now()) - make_interval(secs => q.pending_timeout)
         LIMIT 1
       ) old;

-- name: fail_unstarted_tasks
-- The pending timeout, a rule about tasks: a task none of whose subtasks has started within
-- pending_timeout of becoming runnable (its earliest pending run_after: the creation, a time
-- scheduled ahead, or a retry) fails as a whole, and is counted in error_logs as
-- PendingTimeout. A task with any subtask started is never timed out this way.
-- Candidates are the queue's pending tasks created before the cutoff (tasks_unstarted_idx: a
-- task is pending exactly until its first subtask starts, so started ones are never read
-- past, and no subtask needs probing for a start); each one's subtasks are read through its
-- id range. A claim holding one of its subtasks makes
-- this statement fail (NOWAIT) rather than time out a task that is starting; the next pass
-- looks again. A paused queue times nothing out, and one resumed within pending_timeout
-- neither: the time paused does not count.
WITH stale AS (
    SELECT t.id, t.first_subtask_id, t.last_subtask_id
      FROM taskd.tasks t
     WHERE t.queue = %(queue)s
       AND NOT EXISTS (SELECT 1 FROM taskd.queue_controls c
                        WHERE c.queue = %(queue)s
                          AND (c.paused OR c.resumed_at >= coalesce(%(now)s, now())
                                                           - make_interval(secs => %(pending_timeout)s)))
       AND t.status = 'pending'
       AND t.created_at < coalesce(%(now)s, now()) - make_interval(secs => %(pending_timeout)s)
       AND (SELECT min(s.run_after) FROM taskd.subtasks s
             WHERE s.id BETWEEN t.first_subtask_id AND t.last_subtask_id
               AND s.task_id = t.id AND s.status = 'pending')
           < coalesce(%(now)s, now()) - make_interval(secs => %(pending_timeout)s)
     ORDER BY t.created_at
     LIMIT %(limit)s
), locked AS (
    SELECT s.id
      FROM taskd.subtasks s
      JOIN stale t ON s.id BETWEEN t.first_subtask_id AND t.last_subtask_id AND s.task_id = t.id
     WHERE s.status = 'pending'
       FOR UPDATE OF s NOWAIT
), failed AS (
    UPDATE taskd.subtasks s
       SET status = 'failed',
           error = format('timed out waiting: nobody started it within %%s s',
                          %(pending_timeout)s),
           completed_at = coalesce(%(now)s, now()),
           updated_at = coalesce(%(now)s, now())
      FROM locked
     WHERE s.id = locked.id
    RETURNING s.task_id, s.kind
), logged AS (
    INSERT INTO taskd.error_logs AS e
           (error_type, error_message, count, queue, kind, first_occurred_at, last_occurred_at)
    SELECT 'PendingTimeout',
           format('timed out waiting: nobody started it within %%s s', %(pending_timeout)s),
           count(DISTINCT task_id), %(queue)s, max(kind),
           coalesce(%(now)s, now()), coalesce(%(now)s, now())
      FROM failed
    HAVING count(*) > 0
    ON CONFLICT (error_type, error_message) DO UPDATE
       SET count = e.count + excluded.count,
           queue = excluded.queue,
           kind = excluded.kind,
           last_occurred_at = excluded.last_occurred_at
)
SELECT DISTINCT task_id FROM failed;

-- name: mark_dead_executors
-- Executors whose heartbeat is older than dead_after. A dead executor that heartbeats again
-- comes back (heartbeat_executor).
WITH stale AS (
    SELECT id
      FROM taskd.executors
     WHERE status IN ('running', 'stopping')
       AND last_heartbeat_at < coalesce(%(now)s, now()) - make_interval(secs => %(dead_after)s)
       FOR UPDATE SKIP LOCKED
)
UPDATE taskd.executors e
   SET status = 'dead'
  FROM stale
 WHERE e.id = stale.id
RETURNING e.id;

-- name: delete_finished_subtasks
-- Not while a notification of their task is undelivered: its payload names the first failure.
WITH old AS (
    SELECT id
      FROM taskd.subtasks s
     WHERE completed_at < coalesce(%(now)s, now()) - make_interval(secs => %(retention)s)
       AND status IN ('completed', 'failed', 'cancelled')
       AND NOT EXISTS (SELECT 1 FROM taskd.notifications n
                        WHERE n.task_id = s.task_id AND n.status = 'pending')
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
DELETE FROM taskd.subtasks s USING old WHERE s.id = old.id
RETURNING s.id;

-- name: delete_finished_tasks
-- A task goes with its notifications (tasks_delete_notifications), but not while one of them
-- is undelivered: the outbox loses nothing to retention.
WITH old AS (
    SELECT t.id
      FROM taskd.tasks t
     WHERE t.completed_at < coalesce(%(now)s, now()) - make_interval(secs => %(retention)s)
       AND t.status IN ('completed', 'failed', 'cancelled')
       AND NOT EXISTS (SELECT 1 FROM taskd.subtasks s
                        WHERE s.id BETWEEN t.first_subtask_id AND t.last_subtask_id
                          AND s.task_id = t.id AND s.status IN ('pending', 'processing'))
       AND NOT EXISTS (SELECT 1 FROM taskd.notifications n
                        WHERE n.task_id = t.id AND n.status = 'pending')
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
DELETE FROM taskd.tasks t USING old WHERE t.id = old.id
RETURNING t.id;

-- name: delete_free_unique_keys
-- Unique keys that hold nothing any more and are older than the retention: a period that has
-- passed, or (scope unfinished) a task that ended or is gone. 'forever' keys stay.
WITH free AS (
    SELECT k.owner, k.unique_key
      FROM taskd.unique_keys k
     WHERE k.created_at < coalesce(%(now)s, now()) - make_interval(secs => %(retention)s)
       AND ((k.scope = 'period' AND k.expires_at < coalesce(%(now)s, now()))
            OR (k.scope = 'unfinished'
                AND NOT EXISTS (SELECT 1 FROM taskd.tasks t
                                 WHERE t.id = k.task_id AND t.completed_at IS NULL)))
     LIMIT %(limit)s
       FOR UPDATE OF k SKIP LOCKED
)
DELETE FROM taskd.unique_keys k USING free
 WHERE k.owner = free.owner AND k.unique_key = free.unique_key
RETURNING 1;
