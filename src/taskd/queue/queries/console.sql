-- The operators' console (taskd.queue.console, served by taskd api under /console). Each
-- starts with a `-- name: <name>` header and takes named, bound parameters. A filter is
-- status, queue, kind, user_id and a creation window [created_from, created_to); NULL is
-- "any". Pages are cursors, never offsets.

-- name: console_list_tasks
-- Newest first through the primary key; `before_id` is the last id of the previous page.
SELECT id, name, queue, kind, priority, user_id, params, status, total, completed, failed,
       cancelled, quota_cost, created_at, updated_at, completed_at
  FROM taskd.tasks
 WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
   AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
   AND (%(user_id)s::text IS NULL OR user_id = %(user_id)s::text)
   AND (%(created_from)s::timestamptz IS NULL OR created_at >= %(created_from)s::timestamptz)
   AND (%(created_to)s::timestamptz IS NULL OR created_at < %(created_to)s::timestamptz)
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: console_list_tasks_by_priority
-- Highest priority first, newest first within one (tasks_priority_idx read backwards); the
-- cursor is the last (priority, id) of the previous page.
SELECT id, name, queue, kind, priority, user_id, params, status, total, completed, failed,
       cancelled, quota_cost, created_at, updated_at, completed_at
  FROM taskd.tasks
 WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
   AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
   AND (%(user_id)s::text IS NULL OR user_id = %(user_id)s::text)
   AND (%(created_from)s::timestamptz IS NULL OR created_at >= %(created_from)s::timestamptz)
   AND (%(created_to)s::timestamptz IS NULL OR created_at < %(created_to)s::timestamptz)
   AND (%(before_id)s::bigint IS NULL
        OR (priority, id) < (%(before_priority)s::integer, %(before_id)s::bigint))
 ORDER BY priority DESC, id DESC
 LIMIT %(limit)s;

-- name: console_count_tasks
-- What a bulk action would touch: the tasks of the filter up to `max_id` (the newest task
-- when the count was taken), and their subtasks in the state the action changes, read from
-- the tasks' counters (failed, or not yet finished).
SELECT coalesce(max(id), 0) AS max_id,
       count(*) AS tasks,
       coalesce(sum(CASE WHEN %(status)s::text = 'failed' THEN failed
                         ELSE total - completed - failed - cancelled END), 0) AS subtasks
  FROM taskd.tasks
 WHERE status = %(status)s::text
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
   AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
   AND (%(user_id)s::text IS NULL OR user_id = %(user_id)s::text)
   AND (%(created_from)s::timestamptz IS NULL OR created_at >= %(created_from)s::timestamptz)
   AND (%(created_to)s::timestamptz IS NULL OR created_at < %(created_to)s::timestamptz)
   AND id <= %(max_id)s::bigint;

-- name: console_retry_failed_batch
-- One batch of a bulk retry: the next `batch` failed tasks of the filter below `before_id`
-- (and at most `max_id`), their failed subtasks back to pending with fresh attempts, as
-- retry_failed_subtasks does. Subtasks are written first and their tasks by the counter
-- trigger, in the order every other writer takes them.
WITH picked AS (
    SELECT id, queue, first_subtask_id, last_subtask_id
      FROM taskd.tasks
     WHERE status = 'failed'
       AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
       AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
       AND (%(user_id)s::text IS NULL OR user_id = %(user_id)s::text)
       AND (%(created_from)s::timestamptz IS NULL
            OR created_at >= %(created_from)s::timestamptz)
       AND (%(created_to)s::timestamptz IS NULL OR created_at < %(created_to)s::timestamptz)
       AND id < %(before_id)s::bigint AND id <= %(max_id)s::bigint
     ORDER BY id DESC
     LIMIT %(batch)s
), retried AS (
    UPDATE taskd.subtasks s
       SET status = 'pending', attempt = 0, crashes = 0, run_after = now(), error = NULL,
           result = NULL, completed_at = NULL, cancel_requested = false, updated_at = now()
      FROM picked p
     WHERE s.id BETWEEN p.first_subtask_id AND p.last_subtask_id
       AND s.task_id = p.id AND s.status = 'failed'
    RETURNING s.task_id
), woken AS (
    SELECT pg_notify('taskd', q.queue) FROM (SELECT DISTINCT queue FROM picked) q
)
SELECT (SELECT min(id) FROM picked) AS last_id,
       (SELECT count(DISTINCT task_id) FROM retried) AS tasks,
       (SELECT count(*) FROM retried) AS subtasks,
       (SELECT count(*) FROM woken) AS queues;

-- name: console_cancel_pending_batch
-- One batch of a bulk cancel: the next `batch` pending tasks of the filter (nobody started
-- them) below `before_id`, their pending subtasks cancelled as cancel_task does.
WITH picked AS (
    SELECT id, first_subtask_id, last_subtask_id
      FROM taskd.tasks
     WHERE status = 'pending'
       AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
       AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
       AND (%(user_id)s::text IS NULL OR user_id = %(user_id)s::text)
       AND (%(created_from)s::timestamptz IS NULL
            OR created_at >= %(created_from)s::timestamptz)
       AND (%(created_to)s::timestamptz IS NULL OR created_at < %(created_to)s::timestamptz)
       AND id < %(before_id)s::bigint AND id <= %(max_id)s::bigint
     ORDER BY id DESC
     LIMIT %(batch)s
), cancelled AS (
    UPDATE taskd.subtasks s
       SET status = 'cancelled', completed_at = now(), updated_at = now(), error = 'cancelled'
      FROM picked p
     WHERE s.id BETWEEN p.first_subtask_id AND p.last_subtask_id
       AND s.task_id = p.id AND s.status = 'pending'
    RETURNING s.task_id
)
SELECT (SELECT min(id) FROM picked) AS last_id,
       (SELECT count(DISTINCT task_id) FROM cancelled) AS tasks,
       (SELECT count(*) FROM cancelled) AS subtasks;

-- name: console_task
SELECT id, name, queue, kind, priority, user_id, params, status, total, completed, failed,
       cancelled, quota_cost, created_at, updated_at, completed_at
  FROM taskd.tasks
 WHERE id = %(id)s;

-- name: console_lock_task
SELECT id, status, queue, failed FROM taskd.tasks WHERE id = %(id)s;

-- name: console_subtasks
-- A page of a task's subtasks in id order (its id range of the primary key), each failed one
-- with the latest stack trace of its error: error_logs is keyed by (type, message) and the
-- subtask's error is "<type>: <message>", the message cut to 500 characters there.
SELECT s.id, s.status, s.attempt, s.max_attempts, s.crashes, s.locked_by, s.payload, s.state,
       s.result, s.error, s.run_after, s.created_at, s.started_at, s.completed_at,
       e.id AS error_id, e.stack_trace
  FROM taskd.tasks t
  JOIN taskd.subtasks s
    ON s.id BETWEEN greatest(t.first_subtask_id, %(after_id)s + 1) AND t.last_subtask_id
   AND s.task_id = t.id
  LEFT JOIN taskd.error_logs e
    ON s.error IS NOT NULL
   AND e.error_type = split_part(s.error, ': ', 1)
   AND e.error_message = left(substr(s.error, length(split_part(s.error, ': ', 1)) + 3), 500)
 WHERE t.id = %(task_id)s
 ORDER BY s.id
 LIMIT %(limit)s;

-- name: console_errors
-- Aggregated errors, newest first; the cursor is the last (last_occurred_at, id).
SELECT id, error_type, error_message, count, queue, kind, first_occurred_at,
       last_occurred_at, stack_trace
  FROM taskd.error_logs
 WHERE (%(before_id)s::bigint IS NULL
        OR (last_occurred_at, id) < (%(before_at)s::timestamptz, %(before_id)s::bigint))
 ORDER BY last_occurred_at DESC, id DESC
 LIMIT %(limit)s;

-- name: console_error
SELECT id, error_type, error_message, count, queue, kind, first_occurred_at,
       last_occurred_at, stack_trace
  FROM taskd.error_logs
 WHERE id = %(id)s;

-- name: console_error_subtasks
-- The failed subtasks whose error is this one, newest first: subtasks_failed_idx read
-- backwards from the error's last occurrence to its first (a subtask fails in the statement
-- that counts its error, at the same database time), stopping at `limit`.
SELECT s.id, s.task_id, s.queue, s.kind, s.attempt, s.completed_at
  FROM taskd.error_logs e
 CROSS JOIN LATERAL (
    SELECT s.id, s.task_id, s.queue, s.kind, s.attempt, s.completed_at
      FROM taskd.subtasks s
     WHERE s.status = 'failed'
       AND s.completed_at BETWEEN e.first_occurred_at AND e.last_occurred_at
       AND split_part(s.error, ': ', 1) = e.error_type
       AND left(substr(s.error, length(split_part(s.error, ': ', 1)) + 3), 500)
           = e.error_message
     ORDER BY s.completed_at DESC
     LIMIT %(limit)s
 ) s
 WHERE e.id = %(id)s
 ORDER BY s.completed_at DESC, s.id DESC;

-- name: console_audit_start
INSERT INTO taskd.console_audit (actor, action, target, row_count, finished_at)
VALUES (%(actor)s, %(action)s, %(target)s, %(row_count)s,
        CASE WHEN %(finished)s THEN now() END)
RETURNING id;

-- name: console_audit_progress
UPDATE taskd.console_audit
   SET row_count = row_count + %(row_count)s,
       target = target || %(target)s::jsonb,
       finished_at = CASE WHEN %(finished)s THEN now() END
 WHERE id = %(id)s;

-- name: console_audit_list
SELECT id, actor, action, target, row_count, started_at, finished_at
  FROM taskd.console_audit
 ORDER BY started_at DESC, id DESC
 LIMIT %(limit)s;
