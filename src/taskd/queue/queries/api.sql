-- The HTTP API's queries (taskd.queue.accounts). Each starts with a `-- name: <name>` header and
-- takes named, bound parameters. Names start with api_ so they cannot collide with the core's.

-- name: api_lock_idempotency_key
-- Serialises requests that carry the same (user, Idempotency-Key) until the first commits; a
-- hash collision between two keys only makes them wait for each other.
SELECT pg_advisory_xact_lock(
    hashtextextended('taskd.idempotency:' || %(user_id)s || chr(10) || %(key)s, 0));

-- name: api_find_idempotent_task
SELECT id, name, kind, queue, priority, params, total
  FROM taskd.tasks
 WHERE user_id = %(user_id)s AND idempotency_key = %(key)s;

-- name: api_take_quota
-- The row lock serialises concurrent takers; under READ COMMITTED a waiting UPDATE re-checks
-- quota_remaining after the lock is released, so the quota can never be oversold.
UPDATE taskd.accounts
   SET quota_remaining = quota_remaining - %(cost)s, updated_at = now()
 WHERE user_id = %(user_id)s AND is_member AND quota_remaining >= %(cost)s
RETURNING quota_remaining;

-- name: api_create_task
-- A plain create (no Idempotency-Key, unique key or dependencies) in one call, its own
-- transaction on an autocommit connection: quota, submission, mark, ledger, and the task as the
-- API answers it (taskd.api_create_task, migration 0021). A row with id NULL: the account cannot
-- pay (quota_remaining NULL: no such account), and nothing was written.
SELECT * FROM taskd.api_create_task(
    new_user_id => %(user_id)s, new_queue => %(queue)s, new_kind => %(kind)s,
    new_payloads => %(payloads)s::jsonb, new_name => %(name)s, new_priority => %(priority)s,
    new_params => %(params)s::jsonb, new_max_attempts => %(max_attempts)s,
    new_traceparent => %(traceparent)s, new_notify_url => %(notify_url)s,
    new_notify_on => %(notify_on)s::text[], cost => %(cost)s);

-- name: api_get_account
SELECT user_id, is_member, quota_remaining, created_at, updated_at
  FROM taskd.accounts
 WHERE user_id = %(user_id)s;

-- name: api_mark_api_task
UPDATE taskd.tasks
   SET quota_cost = %(cost)s, idempotency_key = %(key)s
 WHERE id = %(id)s;

-- name: api_record_ledger
INSERT INTO taskd.quota_ledger (user_id, task_id, delta, reason)
VALUES (%(user_id)s, %(task_id)s, %(delta)s, %(reason)s);

-- name: api_task_owner
SELECT id, user_id FROM taskd.tasks WHERE id = %(id)s;

-- name: api_task_detail
-- A task's subtasks: its id range of the primary key (there is no index on task_id).
-- results: the first results_limit completed subtasks' results in id order (the rest through
-- the subtasks endpoint); error: the latest failure. batch_size comes from the first payload
-- and is read only when it is a small whole number, so that no payload can break the cast.
-- result_urls: the first urls_limit subtasks' image URLs (taskd.task_result_urls).
SELECT t.id, t.name, t.kind, t.queue, t.status, t.priority, t.user_id, t.params, t.total,
       t.completed, t.failed, t.cancelled, t.quota_cost, t.created_at, t.updated_at,
       t.completed_at,
       (SELECT CASE WHEN jsonb_typeof(s.payload -> 'batch_size') = 'number'
                         AND (s.payload ->> 'batch_size') ~ '^[0-9]{1,6}$'
                    THEN (s.payload ->> 'batch_size')::integer ELSE 1 END
          FROM taskd.subtasks s
         WHERE s.id BETWEEN t.first_subtask_id AND t.last_subtask_id AND s.task_id = t.id
         ORDER BY s.id LIMIT 1) AS batch_size,
       (SELECT count(*) FROM taskd.subtasks s
         WHERE s.id BETWEEN t.first_subtask_id AND t.last_subtask_id AND s.task_id = t.id
           AND s.status = 'processing') AS processing,
       (SELECT coalesce(jsonb_agg(r.result ORDER BY r.id), '[]'::jsonb)
          FROM (SELECT s.id, s.result FROM taskd.subtasks s
                 WHERE s.id BETWEEN t.first_subtask_id AND t.last_subtask_id
                   AND s.task_id = t.id AND s.status = 'completed'
                 ORDER BY s.id LIMIT %(results_limit)s) r) AS results,
       CASE WHEN t.failed > 0 THEN
           (SELECT s.error FROM taskd.subtasks s
             WHERE s.id BETWEEN t.first_subtask_id AND t.last_subtask_id
               AND s.task_id = t.id AND s.status = 'failed'
             ORDER BY s.completed_at DESC NULLS LAST, s.id LIMIT 1)
       END AS error,
       coalesce(taskd.task_result_urls(t.id, %(urls_limit)s), '{}') AS result_urls
  FROM taskd.tasks t
 WHERE t.id = %(id)s;

-- name: api_list_tasks
-- Newest first by id (identity order is creation order), keyset-paginated by before_id.
SELECT id, name, kind, queue, status, priority, user_id, params, total, completed, failed,
       cancelled, quota_cost, created_at, updated_at, completed_at
  FROM taskd.tasks
 WHERE user_id = %(user_id)s
   AND (%(status)s::text IS NULL OR status = %(status)s::text)
   AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: api_count_tasks
SELECT count(*) AS total
  FROM taskd.tasks
 WHERE user_id = %(user_id)s
   AND (%(status)s::text IS NULL OR status = %(status)s::text)
   AND (%(kind)s::text IS NULL OR kind = %(kind)s::text);

-- name: api_list_subtasks
SELECT s.id, s.status, s.payload, s.result, s.error, s.attempt, s.max_attempts, s.created_at,
       s.started_at, s.completed_at, s.updated_at
  FROM taskd.tasks t
  JOIN taskd.subtasks s
    ON s.id BETWEEN greatest(t.first_subtask_id, %(after_id)s + 1) AND t.last_subtask_id
   AND s.task_id = t.id
 WHERE t.id = %(task_id)s
   AND (%(status)s::text IS NULL OR s.status = %(status)s::text)
 ORDER BY s.id
 LIMIT %(limit)s;

-- name: api_count_subtasks
SELECT count(*) AS total
  FROM taskd.tasks t
  JOIN taskd.subtasks s
    ON s.id BETWEEN t.first_subtask_id AND t.last_subtask_id AND s.task_id = t.id
 WHERE t.id = %(task_id)s
   AND (%(status)s::text IS NULL OR s.status = %(status)s::text);

-- name: api_lock_task
-- Locks the task row first: the refund trigger takes the same row before the account row, so
-- retry (task, then account) and refund wait for each other instead of deadlocking.
-- held_charges: the task's charges (ledger rows with delta < 0) that no refund matches.
SELECT t.id, t.user_id, t.status, t.queue, t.failed, t.quota_cost,
       (SELECT count(*) FROM taskd.quota_ledger c
         WHERE c.task_id = t.id AND c.delta < 0
           AND NOT EXISTS (SELECT 1 FROM taskd.quota_ledger r
                            WHERE r.refund_of = c.id))::integer AS held_charges
  FROM taskd.tasks t
 WHERE t.id = %(id)s
   FOR UPDATE OF t;

-- name: api_add_task_quota_cost
UPDATE taskd.tasks SET quota_cost = quota_cost + %(cost)s WHERE id = %(id)s;

-- name: api_notify_queue
-- Delivered at commit, like taskd.submit_task's wake-up.
SELECT pg_notify('taskd', %(queue)s::text);

-- name: api_ensure_account
INSERT INTO taskd.accounts (user_id) VALUES (%(user_id)s)
ON CONFLICT (user_id) DO NOTHING
RETURNING user_id;

-- name: api_lock_account
SELECT quota_remaining FROM taskd.accounts WHERE user_id = %(user_id)s FOR UPDATE;

-- name: api_update_account
UPDATE taskd.accounts
   SET is_member = %(is_member)s, quota_remaining = %(quota_remaining)s, updated_at = now()
 WHERE user_id = %(user_id)s
RETURNING user_id, is_member, quota_remaining, created_at, updated_at;

-- name: api_processing_rate
-- Uses subtasks_finished_idx: only rows finished inside the window are read.
SELECT count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed
  FROM taskd.subtasks
 WHERE completed_at > now() - make_interval(secs => %(window)s);

-- name: api_database_info
SELECT current_setting('server_version') AS server_version, now() AS now;
