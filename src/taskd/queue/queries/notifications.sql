-- The task-end outbox (taskd.queue.notifications): the dispatcher's claim and results, the
-- operators' view and redelivery. Each starts with a `-- name: <name>` header; values are bound.

-- name: claim_notifications
-- Due notifications, oldest first, taken FOR UPDATE SKIP LOCKED so that no two dispatchers
-- deliver one at once. The claim is a lease on the database clock: run_after moves to the
-- lease's end, so a dispatcher that dies mid-delivery leaves it due again then. With each
-- row, what its payload says: the task (NULL when retention took it) and its first failure.
WITH due AS (
    SELECT id
      FROM taskd.notifications
     WHERE status = 'pending' AND run_after <= now()
     ORDER BY run_after, id
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE taskd.notifications n
       SET attempts = n.attempts + 1,
           locked_by = %(executor_id)s,
           run_after = now() + make_interval(secs => %(lease_timeout)s),
           updated_at = now()
      FROM due
     WHERE n.id = due.id
    RETURNING n.id, n.task_id, n.url, n.event, n.attempts, n.created_at
)
SELECT c.id, c.task_id, c.url, c.event, c.attempts, c.created_at,
       t.name, t.queue, t.kind, t.status AS task_status, t.total, t.completed, t.failed,
       t.cancelled, t.created_at AS task_created_at, t.completed_at AS task_completed_at,
       (SELECT s.error
          FROM taskd.subtasks s
         WHERE s.id BETWEEN t.first_subtask_id AND t.last_subtask_id
           AND s.task_id = t.id AND s.status = 'failed'
         ORDER BY s.id
         LIMIT 1) AS first_error
  FROM claimed c
  LEFT JOIN taskd.tasks t ON t.id = c.task_id
 ORDER BY c.id;

-- name: record_deliveries
-- The dispatcher's results, fenced by locked_by and attempts: a result for a claim that was
-- lost (its lease ran out and another dispatcher took the row) changes nothing. A retry that
-- would fall after retry_since + retry_for is dead instead.
WITH r AS (
    SELECT *
      FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(verdicts)s::text[],
                  %(delays)s::float8[], %(codes)s::integer[], %(errors)s::text[])
           AS r(id, attempts, verdict, delay, code, error)
)
UPDATE taskd.notifications n
   SET status = CASE WHEN r.verdict = 'delivered' THEN 'delivered'
                     WHEN r.verdict = 'dead' THEN 'dead'
                     WHEN now() + make_interval(secs => r.delay)
                          > n.retry_since + make_interval(secs => %(retry_for)s) THEN 'dead'
                     ELSE 'pending' END,
       run_after = CASE WHEN r.verdict = 'retry' THEN now() + make_interval(secs => r.delay)
                        ELSE now() END,
       delivered_at = CASE WHEN r.verdict = 'delivered' THEN now() END,
       locked_by = NULL,
       last_status_code = r.code,
       last_error = r.error,
       updated_at = now()
  FROM r
 WHERE n.id = r.id AND n.locked_by = %(executor_id)s AND n.attempts = r.attempts
   AND n.status = 'pending'
RETURNING n.id, n.status;

-- name: notification_overview
-- Undelivered (pending) and dead notifications, and the age of the oldest undelivered one:
-- for metrics and `taskd status`. Both through partial indexes.
SELECT (SELECT count(*) FROM taskd.notifications WHERE status = 'pending') AS undelivered,
       (SELECT count(*) FROM taskd.notifications WHERE status = 'dead') AS dead,
       (SELECT extract(epoch FROM now() - min(created_at))::float8
          FROM taskd.notifications WHERE status = 'pending') AS oldest_undelivered_seconds;

-- name: list_notifications
SELECT id, task_id, url, event, status, attempts, run_after, locked_by, created_at,
       delivered_at, last_status_code, last_error
  FROM taskd.notifications
 WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
   AND (%(task_id)s::bigint IS NULL OR task_id = %(task_id)s::bigint)
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: redeliver_notifications
-- Dead notifications back to pending, due now, with a fresh retry window and attempt count.
UPDATE taskd.notifications
   SET status = 'pending', run_after = now(), retry_since = now(), attempts = 0,
       locked_by = NULL, updated_at = now()
 WHERE status = 'dead'
   AND (%(ids)s::bigint[] IS NULL OR id = ANY (%(ids)s::bigint[]))
   AND (%(task_id)s::bigint IS NULL OR task_id = %(task_id)s::bigint)
RETURNING id;

-- name: notify_routes_delete_others
DELETE FROM taskd.notify_routes WHERE NOT (scope = ANY (%(scopes)s::text[]));

-- name: check_notify_target
-- A route from the settings, checked as a task's own target is (22023 if refused).
SELECT taskd.check_notify_target(%(url)s, %(notify_on)s::text[]);

-- name: notify_routes_upsert
INSERT INTO taskd.notify_routes (scope, url, notify_on)
VALUES (%(scope)s, %(url)s, %(notify_on)s::text[])
ON CONFLICT (scope) DO UPDATE
   SET url = excluded.url, notify_on = excluded.notify_on
 WHERE (taskd.notify_routes.url, taskd.notify_routes.notify_on)
       IS DISTINCT FROM (excluded.url, excluded.notify_on);
