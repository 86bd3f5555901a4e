-- The queue core's queries. Each starts with a `-- name: <name>` header and takes named,
-- bound parameters. `now` parameters default to the database clock: tests pass a time to move it.

-- name: submit_task
-- A task without a user. The payload limit is the database's own (taskd.limits).
SELECT taskd.submit_task(
    queue => %(queue)s,
    kind => %(kind)s,
    payloads => %(payloads)s::jsonb,
    name => %(name)s,
    priority => %(priority)s,
    params => %(params)s::jsonb,
    max_attempts => %(max_attempts)s,
    run_after => now() + make_interval(secs => %(delay)s),
    traceparent => %(traceparent)s,
    notify_url => %(notify_url)s,
    notify_on => %(notify_on)s::text[]
) AS task_id;

-- name: submit_task_for_user
-- A user's task (the API's); EXECUTE on the function is the API role's alone.
SELECT taskd.submit_task_for_user(
    user_id => %(user_id)s,
    queue => %(queue)s,
    kind => %(kind)s,
    payloads => %(payloads)s::jsonb,
    name => %(name)s,
    priority => %(priority)s,
    params => %(params)s::jsonb,
    max_attempts => %(max_attempts)s,
    run_after => now() + make_interval(secs => %(delay)s),
    traceparent => %(traceparent)s,
    notify_url => %(notify_url)s,
    notify_on => %(notify_on)s::text[]
) AS task_id;

-- name: task_traceparents
-- The traceparents of the claimed subtasks' tasks that have one: read per claimed batch, and
-- only while tracing is on (taskd.executor.tracing), so that the claim stays as it is.
SELECT id, traceparent
  FROM taskd.tasks
 WHERE id = ANY(%(task_ids)s::bigint[]) AND traceparent IS NOT NULL;

-- name: claim_subtasks
-- One statement: pick the highest priority, then oldest, ready rows of the queue, skip rows
-- other claimers hold, and take them under a lease. With cluster_max set, the caller holds
-- lock_queue_claims in the same transaction; without it, the count below is never run.
-- A paused queue (queue_controls) claims nothing. A rate-limited queue claims with
-- claim_subtasks_rate_limited: the same statement, plus the window's lock and count, whose
-- planning alone cost every claim of this one 0.08 ms (bench/claim_controls.py).
--
-- With after_* set (the last row of the caller's previous claim), the scan resumes after that
-- row, then goes on to lower priorities, instead of starting from the head of the claim index:
-- the head holds an entry for every row claimed since the last VACUUM, and walking them costs
-- each claim time in proportion (see Producer for when it starts from the head). Plans are
-- custom, so with after_priority NULL the first branch is the plain scan and the second is
-- planned away.
WITH picked AS (
    SELECT id FROM (
        SELECT id
          FROM taskd.subtasks
         WHERE status = 'pending'
           AND queue = %(queue)s
           AND run_after <= coalesce(%(now)s, now())
           AND crashes < %(suspect_after)s  -- a suspected poison pill runs alone
           AND (%(after_priority)s::integer IS NULL
                OR priority = %(after_priority)s::integer
                   AND (run_after, id) > (%(after_run_after)s::timestamptz, %(after_id)s::bigint))
         ORDER BY priority DESC, run_after, id
         LIMIT %(limit)s
           FOR UPDATE SKIP LOCKED
    ) resumed
    UNION ALL
    SELECT id FROM (
        SELECT id
          FROM taskd.subtasks
         WHERE status = 'pending'
           AND queue = %(queue)s
           AND run_after <= coalesce(%(now)s, now())
           AND crashes < %(suspect_after)s  -- a suspected poison pill runs alone
           AND priority < %(after_priority)s::integer
         ORDER BY priority DESC, run_after, id
         LIMIT %(limit)s
           FOR UPDATE SKIP LOCKED
    ) lower
    -- Rows are locked as this limit takes them: none beyond it. least() skips NULLs.
     LIMIT CASE WHEN EXISTS (SELECT 1 FROM taskd.queue_controls c
                              WHERE c.queue = %(queue)s AND c.paused) THEN 0
                ELSE least(
                    %(limit)s,
                    CASE WHEN %(cluster_max)s::integer IS NOT NULL
                         THEN greatest(0, %(cluster_max)s::integer - (
                             SELECT count(*) FROM taskd.subtasks
                              -- a lease is held exactly while processing: subtasks_lease_idx
                              WHERE lease_expires_at IS NOT NULL AND status = 'processing'
                                AND queue = %(queue)s)) END)
           END
), claimed AS (
    UPDATE taskd.subtasks s
       SET status = 'processing',
           locked_by = %(executor_id)s,
           attempt = s.attempt + 1,
           lease_expires_at = coalesce(%(now)s, now()) + make_interval(secs => %(lease_timeout)s),
           started_at = coalesce(%(now)s, now()),
           updated_at = coalesce(%(now)s, now())
    -- An id array, not a join: with cluster_max the LIMIT is an expression the planner cannot
    -- estimate, and a join would then hash a sequential scan of subtasks on a long backlog.
     WHERE s.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING s.id, s.task_id, s.queue, s.kind, s.priority, s.payload, s.state, s.attempt,
              s.max_attempts, s.run_after,
              -- seconds from ready to started: one float to read, not two timestamps
              date_part('epoch', s.started_at - s.run_after) AS wait
)
-- Claim order, sorted here: cheaper than in the executor.
SELECT * FROM claimed ORDER BY priority DESC, run_after, id;

-- name: claim_subtasks_plain
-- claim_subtasks without a cluster_max or a rate limit (the executor's usual claim): the same
-- rows, order and lease in the function taskd.claim_subtasks (schema.sql, version 27), which
-- keeps one generic plan a session where this session plans each statement (~0.25 ms a claim).
SELECT * FROM taskd.claim_subtasks(
    %(queue)s::text, %(executor_id)s::text, %(limit)s::integer, %(lease_timeout)s::float8,
    %(suspect_after)s::integer, %(after_priority)s::integer, %(after_run_after)s::timestamptz,
    %(after_id)s::bigint, %(now)s::timestamptz);

-- name: claim_subtasks_of_queues
-- claim_subtasks for several queues in one statement, each with its own limit and resume
-- point (the arrays are parallel, one element a queue; after_* NULL: from the claim index's
-- head): the executor's claims of many queues with few slots each, whose fixed cost per
-- statement (round trip, plan, commit) one statement pays once (taskd.executor.claimer).
-- Not for queues with a rate limit or a cluster_max: those keep their own statements. A paused
-- queue claims nothing. Per queue, three branches of which the one-time filters on the queue's
-- resume point leave the ones that apply, each an index range of subtasks_claim_idx: from the
-- head when there is no resume point; else the resume point's priority after it, then lower
-- priorities.
WITH wanted AS (
    SELECT w.*
      FROM unnest(%(queues)s::text[], %(limits)s::integer[], %(after_priorities)s::integer[],
                  %(after_run_afters)s::timestamptz[], %(after_ids)s::bigint[])
           AS w(queue, lim, after_priority, after_run_after, after_id)
     WHERE NOT EXISTS (SELECT 1 FROM taskd.queue_controls c
                        WHERE c.queue = w.queue AND c.paused)
), picked AS (
    SELECT p.id
      FROM wanted w
     CROSS JOIN LATERAL (
        SELECT id FROM (
            SELECT id
              FROM taskd.subtasks
             WHERE w.after_id IS NULL
               AND status = 'pending'
               AND queue = w.queue
               AND run_after <= coalesce(%(now)s, now())
               AND crashes < %(suspect_after)s  -- a suspected poison pill runs alone
             ORDER BY priority DESC, run_after, id
             LIMIT w.lim
               FOR UPDATE SKIP LOCKED
        ) head
        UNION ALL
        SELECT id FROM (
            SELECT id
              FROM taskd.subtasks
             WHERE status = 'pending'
               AND queue = w.queue
               AND run_after <= coalesce(%(now)s, now())
               AND crashes < %(suspect_after)s
               AND priority = w.after_priority
               AND (run_after, id) > (w.after_run_after, w.after_id)
             ORDER BY priority DESC, run_after, id
             LIMIT w.lim
               FOR UPDATE SKIP LOCKED
        ) resumed
        UNION ALL
        SELECT id FROM (
            SELECT id
              FROM taskd.subtasks
             WHERE status = 'pending'
               AND queue = w.queue
               AND run_after <= coalesce(%(now)s, now())
               AND crashes < %(suspect_after)s
               AND priority < w.after_priority
             ORDER BY priority DESC, run_after, id
             LIMIT w.lim
               FOR UPDATE SKIP LOCKED
        ) lower
        -- Rows are locked as this limit takes them: none beyond it.
         LIMIT w.lim
     ) p
), claimed AS (
    UPDATE taskd.subtasks s
       SET status = 'processing',
           locked_by = %(executor_id)s,
           attempt = s.attempt + 1,
           lease_expires_at = coalesce(%(now)s, now()) + make_interval(secs => %(lease_timeout)s),
           started_at = coalesce(%(now)s, now()),
           updated_at = coalesce(%(now)s, now())
     WHERE s.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING s.id, s.task_id, s.queue, s.kind, s.priority, s.payload, s.state, s.attempt,
              s.max_attempts, s.run_after,
              date_part('epoch', s.started_at - s.run_after) AS wait
)
-- Each queue's rows in claim order, the queues one after the other.
SELECT * FROM claimed ORDER BY queue, priority DESC, run_after, id;

-- name: claim_subtasks_rate_limited
-- claim_subtasks for a queue with a rate limit: at most rate_limit starts in any stretch of
-- rate_period seconds (a sliding window, by started_at), across all executors. The claim locks
-- the queue's control row, takes no more than the window ending now has left, and records what
-- it took, all in this statement. Everything else is claim_subtasks's, word for word
-- (tests/unit/test_claim_queries.py keeps them so), but started_at.
WITH bucket AS (
    -- Locked: racing claims of a rate-limited queue take turns, each seeing what the one
    -- before it took (READ COMMITTED re-reads a row it waited for).
    SELECT c.rate_claimed_at, c.rate_claimed
      FROM taskd.queue_controls c
     WHERE c.queue = %(queue)s
       FOR UPDATE OF c
), rate_window AS (
    -- The claim's time, read after the lock: now() is when the transaction began, before any
    -- wait for the claim it took turns with, whose time was read later. Never before the last
    -- claim recorded, so that started_at runs in the order the window counts them.
    SELECT b.claim_time,
           greatest(0, %(rate_limit)s::integer - taskd.rate_window_used(
               b.rate_claimed_at, b.rate_claimed,
               b.claim_time - make_interval(secs => %(rate_period)s::integer))) AS free
      FROM (SELECT bucket.*,
                   coalesce(%(now)s, greatest(clock_timestamp(),
                                              rate_claimed_at[cardinality(rate_claimed_at)]))
                       AS claim_time
              FROM bucket) b
), picked AS (
    SELECT id FROM (
        SELECT id
          FROM taskd.subtasks
         WHERE status = 'pending'
           AND queue = %(queue)s
           AND run_after <= coalesce(%(now)s, now())
           AND crashes < %(suspect_after)s  -- a suspected poison pill runs alone
           AND (%(after_priority)s::integer IS NULL
                OR priority = %(after_priority)s::integer
                   AND (run_after, id) > (%(after_run_after)s::timestamptz, %(after_id)s::bigint))
         ORDER BY priority DESC, run_after, id
         LIMIT %(limit)s
           FOR UPDATE SKIP LOCKED
    ) resumed
    UNION ALL
    SELECT id FROM (
        SELECT id
          FROM taskd.subtasks
         WHERE status = 'pending'
           AND queue = %(queue)s
           AND run_after <= coalesce(%(now)s, now())
           AND crashes < %(suspect_after)s  -- a suspected poison pill runs alone
           AND priority < %(after_priority)s::integer
         ORDER BY priority DESC, run_after, id
         LIMIT %(limit)s
           FOR UPDATE SKIP LOCKED
    ) lower
    -- Rows are locked as this limit takes them: none beyond it. least() skips NULLs.
     LIMIT CASE WHEN EXISTS (SELECT 1 FROM taskd.queue_controls c
                              WHERE c.queue = %(queue)s AND c.paused) THEN 0
                ELSE least(
                    %(limit)s,
                    CASE WHEN %(cluster_max)s::integer IS NOT NULL
                         THEN greatest(0, %(cluster_max)s::integer - (
                             SELECT count(*) FROM taskd.subtasks
                              -- a lease is held exactly while processing: subtasks_lease_idx
                              WHERE lease_expires_at IS NOT NULL AND status = 'processing'
                                AND queue = %(queue)s)) END,
                    -- No control row yet: nothing to count in, so nothing is claimed.
                    coalesce((SELECT free FROM rate_window), 0))
           END
), claimed AS (
    UPDATE taskd.subtasks s
       SET status = 'processing',
           locked_by = %(executor_id)s,
           attempt = s.attempt + 1,
           lease_expires_at = coalesce(%(now)s, now()) + make_interval(secs => %(lease_timeout)s),
           started_at = (SELECT claim_time FROM rate_window),
           updated_at = coalesce(%(now)s, now())
    -- An id array, not a join: with cluster_max the LIMIT is an expression the planner cannot
    -- estimate, and a join would then hash a sequential scan of subtasks on a long backlog.
     WHERE s.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING s.id, s.task_id, s.queue, s.kind, s.priority, s.payload, s.state, s.attempt,
              s.max_attempts, s.run_after,
              -- seconds from ready to started: one float to read, not two timestamps
              date_part('epoch', s.started_at - s.run_after) AS wait
), counted AS (
    -- The rate limit's record: in the row bucket locked (its newest version), so no start of
    -- a concurrent claim is lost.
    UPDATE taskd.queue_controls c
       SET (rate_claimed_at, rate_claimed) = (
               SELECT * FROM taskd.rate_window_add(
                   c.rate_claimed_at, c.rate_claimed, w.claim_time, %(rate_period)s::integer,
                   (SELECT count(*) FROM claimed)::integer)),
           rate_limit = %(rate_limit)s::integer,
           rate_period = %(rate_period)s::integer
      FROM rate_window w
     WHERE c.queue = %(queue)s
       AND EXISTS (SELECT 1 FROM claimed)
)
-- Claim order, sorted here: cheaper than in the executor.
SELECT * FROM claimed ORDER BY priority DESC, run_after, id;

-- name: claim_suspect
-- One suspected poison pill (a subtask that was running in suspect_after crashes of its
-- executor), for an executor that runs nothing else meanwhile: alone, a crash is its own.
-- Through subtasks_suspect_idx, which holds only subtasks with a crash. A paused queue's
-- suspects wait, and so do a rate-limited queue's while its window is used up; a suspect's
-- start counts in the window. Like claim_subtasks_rate_limited, it takes its turn on the
-- queue's control row first and decides on that row's newest version (READ COMMITTED re-reads
-- a row it waited for), its time read after the lock: a racing claim cannot make it one start
-- too many.
WITH candidate AS (
    -- The queue of the first suspect that looks claimable (a read without locks); the pause and
    -- the window are decided again below, on the locked row.
    SELECT queue
      FROM taskd.subtasks
     WHERE status = 'pending'
       AND crashes > 0
       AND crashes >= %(suspect_after)s
       AND queue = ANY(%(queues)s::text[])
       AND run_after <= coalesce(%(now)s, now())
       AND queue NOT IN (
           SELECT c.queue FROM taskd.queue_controls c
            WHERE c.paused
               OR taskd.rate_window_used(
                      c.rate_claimed_at, c.rate_claimed,
                      coalesce(%(now)s, now()) - make_interval(secs => c.rate_period))
                  >= c.rate_limit)
     ORDER BY priority DESC, run_after, id
     LIMIT 1
), bucket AS (
    SELECT c.queue, c.paused, c.rate_limit, c.rate_period, c.rate_claimed_at, c.rate_claimed,
           coalesce(%(now)s, greatest(clock_timestamp(),
                                      c.rate_claimed_at[cardinality(c.rate_claimed_at)]))
               AS claim_time
      FROM taskd.queue_controls c
     WHERE c.queue = (SELECT queue FROM candidate)
       FOR UPDATE OF c
), picked AS (
    SELECT id
      FROM taskd.subtasks
     WHERE status = 'pending'
       AND crashes > 0
       AND crashes >= %(suspect_after)s
       AND queue = (SELECT queue FROM candidate)
       AND run_after <= coalesce(%(now)s, now())
       AND NOT EXISTS (
           SELECT 1 FROM bucket b
            WHERE b.paused
               OR taskd.rate_window_used(b.rate_claimed_at, b.rate_claimed,
                                         b.claim_time - make_interval(secs => b.rate_period))
                  >= b.rate_limit)
     ORDER BY priority DESC, run_after, id
     LIMIT 1
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE taskd.subtasks s
       SET status = 'processing',
           locked_by = %(executor_id)s,
           attempt = s.attempt + 1,
           lease_expires_at = coalesce(%(now)s, now()) + make_interval(secs => %(lease_timeout)s),
           started_at = coalesce((SELECT claim_time FROM bucket WHERE rate_limit IS NOT NULL),
                                 %(now)s, now()),
           updated_at = coalesce(%(now)s, now())
      FROM picked
     WHERE s.id = picked.id
    RETURNING s.id, s.task_id, s.queue, s.kind, s.priority, s.payload, s.state, s.attempt,
              s.max_attempts, s.run_after, date_part('epoch', s.started_at - s.run_after) AS wait
), counted AS (
    UPDATE taskd.queue_controls c
       SET (rate_claimed_at, rate_claimed) = (
               SELECT * FROM taskd.rate_window_add(
                   c.rate_claimed_at, c.rate_claimed, b.claim_time, c.rate_period, 1))
      FROM bucket b
     WHERE c.queue = b.queue AND c.rate_limit IS NOT NULL
       AND EXISTS (SELECT 1 FROM claimed)
)
SELECT * FROM claimed;

-- name: suspects_waiting
-- Whether any of these queues has a suspect ready (subtasks_suspect_idx).
SELECT EXISTS (
    SELECT 1 FROM taskd.subtasks
     WHERE status = 'pending' AND crashes > 0 AND crashes >= %(suspect_after)s
       AND queue = ANY(%(queues)s::text[]) AND run_after <= now()
) AS waiting;

-- name: poll
-- The executor's one look an interval (taskd.executor.poller), three in one round trip:
-- ready: which of these queues a claim would take something from now (a ready row that is
-- not a suspect, the queue not paused, its sliding rate window, the limit its claims last
-- recorded, not used up), a probe of the claim index per queue that stops at its first ready
-- row (LATERAL ... LIMIT 1), in the order given; suspects: whether a suspect of them is ready
-- for the quarantine (subtasks_suspect_idx), when asked; notifications: whether a task-end
-- notification is due for the dispatcher (notifications_due_idx), when asked. Each of the
-- three was a statement of its own every second of every idle daemon.
SELECT ARRAY(
         SELECT q.queue
           FROM unnest(%(queues)s::text[]) WITH ORDINALITY AS q(queue, n)
          CROSS JOIN LATERAL (
                 SELECT 1
                   FROM taskd.subtasks s
                  WHERE s.status = 'pending'
                    AND s.queue = q.queue
                    AND s.run_after <= coalesce(%(now)s, now())
                    AND s.crashes < %(suspect_after)s
                  LIMIT 1
                ) ready
          WHERE NOT EXISTS (
                 SELECT 1 FROM taskd.queue_controls c
                  WHERE c.queue = q.queue
                    AND (c.paused
                         OR taskd.rate_window_used(
                                c.rate_claimed_at, c.rate_claimed,
                                coalesce(%(now)s, now()) - make_interval(secs => c.rate_period))
                            >= c.rate_limit))
          ORDER BY q.n
       ) AS ready,
       CASE WHEN %(suspects)s THEN EXISTS (
                SELECT 1 FROM taskd.subtasks
                 WHERE status = 'pending' AND crashes > 0 AND crashes >= %(suspect_after)s
                   AND queue = ANY(%(queues)s::text[])
                   AND run_after <= coalesce(%(now)s, now()))
            ELSE false END AS suspects,
       CASE WHEN %(notifications)s THEN EXISTS (
                SELECT 1 FROM taskd.notifications
                 WHERE status = 'pending' AND run_after <= coalesce(%(now)s, now()))
            ELSE false END AS notifications;

-- name: lock_queue_claims
-- The cluster-wide cap: capped claims of one queue take this lock first, in the same
-- transaction, so that claim_subtasks counts every claim committed before it.
SELECT pg_advisory_xact_lock(hashtextextended('taskd.claim:' || %(queue)s, 0));

-- name: record_outcomes
-- The outcomes of a batch, one JSON document (taskd.queue.encoding.outcomes_json); the ids
-- applied come back, a fenced-out one is missing (schema.sql, taskd.record_outcomes: one
-- generic plan a session instead of ~0.25 ms of planning a batch).
SELECT id FROM taskd.record_outcomes(%(executor_id)s, %(outcomes)s::jsonb, %(now)s) AS id;

-- name: checkpoint_subtask
UPDATE taskd.subtasks
   SET state = %(state)s, updated_at = now()
 WHERE id = %(id)s
   AND locked_by = %(executor_id)s
   AND attempt = %(attempt)s
   AND status = 'processing'
RETURNING id;

-- name: extend_leases
UPDATE taskd.subtasks
   SET lease_expires_at = coalesce(%(now)s, now()) + make_interval(secs => %(lease_timeout)s)
 WHERE id = ANY(%(ids)s::bigint[])
   AND locked_by = %(executor_id)s
   AND status = 'processing'
RETURNING id;

-- name: release_subtasks
-- Give subtasks back on shutdown: pending again, lease cleared, the attempt not spent; one
-- whose task was cancelled meanwhile ends cancelled instead.
UPDATE taskd.subtasks s
   SET status = CASE WHEN s.cancel_requested THEN 'cancelled' ELSE 'pending' END,
       error = CASE WHEN s.cancel_requested THEN 'cancelled' ELSE s.error END,
       completed_at = CASE WHEN s.cancel_requested THEN now() END,
       locked_by = NULL,
       lease_expires_at = NULL,
       attempt = CASE WHEN s.cancel_requested THEN s.attempt ELSE s.attempt - 1 END,
       run_after = now(),
       updated_at = now()
  FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS r(id, attempt)
 WHERE s.id = ANY(ARRAY(SELECT unnest(%(ids)s::bigint[])))
   AND s.id = r.id
   AND s.locked_by = %(executor_id)s
   AND s.attempt = r.attempt
   AND s.status = 'processing'
RETURNING s.id;

-- name: register_executor
INSERT INTO taskd.executors
       (id, executor_group, hostname, pid, version, status, concurrency, running, metrics_url)
VALUES (%(id)s, %(executor_group)s, %(hostname)s, %(pid)s, %(version)s, 'running',
        %(concurrency)s, '{}'::jsonb, %(metrics_url)s)
ON CONFLICT (id) DO UPDATE
   SET executor_group = excluded.executor_group,
       hostname = excluded.hostname,
       pid = excluded.pid,
       version = excluded.version,
       status = 'running',
       started_at = now(),
       last_heartbeat_at = now(),
       stopped_at = NULL,
       concurrency = excluded.concurrency,
       running = '{}'::jsonb,
       metrics_url = excluded.metrics_url;

-- name: heartbeat_executor
-- A dead executor that heartbeats again is alive: its status comes back to running.
UPDATE taskd.executors
   SET last_heartbeat_at = coalesce(%(now)s, now()),
       status = CASE WHEN status = 'dead' THEN 'running' ELSE status END,
       concurrency = %(concurrency)s,
       running = %(running)s
 WHERE id = %(id)s
RETURNING status;

-- name: set_executor_status
UPDATE taskd.executors
   SET status = %(status)s,
       last_heartbeat_at = now(),
       stopped_at = CASE WHEN %(status)s = 'stopped' THEN now() END,
       running = CASE WHEN %(status)s = 'stopped' THEN '{}'::jsonb ELSE running END
 WHERE id = %(id)s;

-- name: cancel_task
-- Pending subtasks become cancelled; processing ones are asked to stop (cancel_requested).
-- A task's subtasks: its id range of the primary key (there is no index on task_id).
WITH pending AS (
    UPDATE taskd.subtasks s
       SET status = 'cancelled', completed_at = now(), updated_at = now(),
           error = 'cancelled'
      FROM taskd.tasks t
     WHERE t.id = %(task_id)s AND s.id BETWEEN t.first_subtask_id AND t.last_subtask_id
       AND s.task_id = t.id AND s.status = 'pending'
    RETURNING s.id
), running AS (
    UPDATE taskd.subtasks s
       SET cancel_requested = true, updated_at = now()
      FROM taskd.tasks t
     WHERE t.id = %(task_id)s AND s.id BETWEEN t.first_subtask_id AND t.last_subtask_id
       AND s.task_id = t.id AND s.status = 'processing' AND NOT s.cancel_requested
    RETURNING s.id
)
SELECT (SELECT count(*) FROM pending) AS cancelled, (SELECT count(*) FROM running) AS requested;

-- name: retry_failed_subtasks
-- Failed subtasks back to pending with fresh attempts; for `taskd tasks retry` and the API's
-- retry (which then wakes the executors with api_notify_queue in the same transaction).
UPDATE taskd.subtasks s
   SET status = 'pending', attempt = 0, crashes = 0, run_after = now(), error = NULL,
       result = NULL, completed_at = NULL, cancel_requested = false, updated_at = now()
  FROM taskd.tasks t
 WHERE t.id = %(task_id)s AND s.id BETWEEN t.first_subtask_id AND t.last_subtask_id
   AND s.task_id = t.id AND s.status = 'failed'
RETURNING s.id;

-- name: cancel_requested
SELECT id FROM taskd.subtasks
 WHERE id = ANY(%(ids)s::bigint[]) AND cancel_requested AND status = 'processing';

-- name: get_task
SELECT id, name, queue, kind, priority, user_id, params, status, total, completed, failed,
       cancelled, quota_cost, created_at, updated_at, completed_at
  FROM taskd.tasks
 WHERE id = %(id)s;

-- name: list_subtasks
SELECT s.id, s.task_id, s.queue, s.kind, s.priority, s.status, s.payload, s.state, s.result,
       s.error, s.attempt, s.max_attempts, s.run_after, s.locked_by, s.lease_expires_at,
       s.cancel_requested, s.created_at, s.started_at, s.completed_at, s.updated_at
  FROM taskd.tasks t
  JOIN taskd.subtasks s
    ON s.id BETWEEN greatest(t.first_subtask_id, %(after_id)s + 1) AND t.last_subtask_id
   AND s.task_id = t.id
 WHERE t.id = %(task_id)s
 ORDER BY s.id
 LIMIT %(limit)s;

-- name: database_now
SELECT now() AS now;

-- name: submit_task_flow
-- submit_task with a unique key or dependencies: the task's id, and whether the key returned an existing task
-- (taskd.submit_existing, set by the call; the subquery runs it first).
SELECT s.task_id,
       %(unique_key)s::text IS NOT NULL
       AND current_setting('taskd.submit_existing', true) = 'on' AS existing
  FROM (SELECT taskd.submit_task(
            queue => %(queue)s,
            kind => %(kind)s,
            payloads => %(payloads)s::jsonb,
            name => %(name)s,
            priority => %(priority)s,
            params => %(params)s::jsonb,
            max_attempts => %(max_attempts)s,
            run_after => now() + make_interval(secs => %(delay)s),
            traceparent => %(traceparent)s,
            unique_key => %(unique_key)s,
            unique_scope => %(unique_scope)s,
            after => %(after)s::bigint[],
            notify_url => %(notify_url)s,
            notify_on => %(notify_on)s::text[]
        ) AS task_id OFFSET 0) s;

-- name: submit_task_for_user_flow
-- submit_task_for_user with a unique key (owned by the user): as submit_task_flow.
SELECT s.task_id,
       %(unique_key)s::text IS NOT NULL
       AND current_setting('taskd.submit_existing', true) = 'on' AS existing
  FROM (SELECT taskd.submit_task_for_user(
            user_id => %(user_id)s,
            queue => %(queue)s,
            kind => %(kind)s,
            payloads => %(payloads)s::jsonb,
            name => %(name)s,
            priority => %(priority)s,
            params => %(params)s::jsonb,
            max_attempts => %(max_attempts)s,
            run_after => now() + make_interval(secs => %(delay)s),
            traceparent => %(traceparent)s,
            unique_key => %(unique_key)s,
            unique_scope => %(unique_scope)s,
            after => %(after)s::bigint[],
            notify_url => %(notify_url)s,
            notify_on => %(notify_on)s::text[]
        ) AS task_id OFFSET 0) s;
