-- Read-only queries for operators (`taskd status`, `taskd errors`, `taskd tasks`) and for the
-- metrics' stats collector. Backlog counts read only unfinished rows through the partial
-- indexes, so they stay cheap however many finished rows exist.

-- name: queue_overview
-- Backlog per queue, plus what finished in the last hour (through subtasks_finished_idx).
-- Rates are finished subtasks (completed or failed) per minute over 1, 5 and 15 minutes.
WITH backlog AS (
    SELECT queue,
           count(*) FILTER (WHERE run_after <= now()) AS ready,
           count(*) FILTER (WHERE run_after > now()) AS scheduled,
           0::bigint AS processing,
           min(run_after) FILTER (WHERE run_after <= now()) AS oldest_ready_at
      FROM taskd.subtasks
     WHERE status = 'pending'
     GROUP BY queue
    UNION ALL
    SELECT queue, 0, 0, count(*), NULL
      FROM taskd.subtasks
     WHERE status = 'processing' AND lease_expires_at IS NOT NULL  -- subtasks_lease_idx
     GROUP BY queue
), pending AS (
    SELECT queue, sum(ready)::bigint AS ready, sum(scheduled)::bigint AS scheduled,
           sum(processing)::bigint AS processing, min(oldest_ready_at) AS oldest_ready_at
      FROM backlog
     GROUP BY queue
), recent AS (
    SELECT queue,
           count(*) FILTER (WHERE status = 'completed') AS completed_last_hour,
           count(*) FILTER (WHERE status = 'failed') AS failed_last_hour,
           count(*) FILTER (WHERE status IN ('completed', 'failed')
                              AND completed_at > now() - interval '1 minute') AS finished_1m,
           count(*) FILTER (WHERE status IN ('completed', 'failed')
                              AND completed_at > now() - interval '5 minutes') AS finished_5m,
           count(*) FILTER (WHERE status IN ('completed', 'failed')
                              AND completed_at > now() - interval '15 minutes') AS finished_15m
      FROM taskd.subtasks
     WHERE completed_at > now() - interval '1 hour'
     GROUP BY queue
)
SELECT coalesce(p.queue, r.queue) AS queue,
       coalesce(p.ready, 0) AS ready,
       coalesce(p.scheduled, 0) AS scheduled,
       coalesce(p.processing, 0) AS processing,
       coalesce(r.completed_last_hour, 0) AS completed_last_hour,
       coalesce(r.failed_last_hour, 0) AS failed_last_hour,
       coalesce(r.finished_1m, 0)::float8 AS rate_1m,
       coalesce(r.finished_5m, 0)::float8 / 5 AS rate_5m,
       coalesce(r.finished_15m, 0)::float8 / 15 AS rate_15m,
       extract(epoch FROM now() - p.oldest_ready_at)::float8 AS oldest_pending_seconds
  FROM pending p
  FULL JOIN recent r ON r.queue = p.queue
 ORDER BY 1;

-- name: task_counts
-- Tasks by status, with the sums of their subtask counters: one pass over tasks (which hold
-- one row per submit), none over subtasks.
SELECT status, count(*) AS tasks, coalesce(sum(completed), 0) AS completed,
       coalesce(sum(failed), 0) AS failed, coalesce(sum(cancelled), 0) AS cancelled
  FROM taskd.tasks
 GROUP BY status;

-- name: executor_overview
-- Executors that run, or stopped or died within the hour, or still hold leases; leases counts
-- the processing subtasks locked by each (a lease is held exactly while processing, so
-- lease_expires_at IS NOT NULL reads them through subtasks_lease_idx).
SELECT e.id, e.executor_group, e.hostname, e.pid, e.version, e.status, e.started_at,
       extract(epoch FROM now() - e.last_heartbeat_at)::float8 AS heartbeat_age_seconds,
       e.concurrency, e.running, e.metrics_url,
       (SELECT count(*) FROM taskd.subtasks s
         WHERE s.lease_expires_at IS NOT NULL AND s.status = 'processing'
           AND s.locked_by = e.id) AS leases
  FROM taskd.executors e
 WHERE e.status IN ('running', 'stopping')
    OR e.last_heartbeat_at > now() - interval '1 hour'
    OR EXISTS (SELECT 1 FROM taskd.subtasks s
                WHERE s.lease_expires_at IS NOT NULL AND s.status = 'processing'
                  AND s.locked_by = e.id)
 ORDER BY e.executor_group, e.id;

-- name: recent_errors
-- The most frequent errors that occurred within `since` seconds.
SELECT error_type, error_message, count, queue, kind, first_occurred_at, last_occurred_at
  FROM taskd.error_logs
 WHERE last_occurred_at > now() - make_interval(secs => %(since)s)
 ORDER BY count DESC, last_occurred_at DESC
 LIMIT %(limit)s;

-- name: list_errors
-- Aggregated errors, newest first, optionally of one queue.
SELECT error_type, error_message, count, queue, kind, first_occurred_at, last_occurred_at,
       stack_trace
  FROM taskd.error_logs
 WHERE (%(queue)s::text IS NULL OR queue = %(queue)s::text)
 ORDER BY last_occurred_at DESC, id DESC
 LIMIT %(limit)s;

-- name: database_overview
SELECT current_setting('server_version') AS server_version,
       pg_database_size(current_database()) AS size_bytes,
       (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database())
           AS connections,
       current_setting('max_connections')::integer AS max_connections,
       (SELECT extract(epoch FROM now() - min(xact_start))::float8
          FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND xact_start IS NOT NULL) AS oldest_transaction_seconds,
       (SELECT n_dead_tup FROM pg_stat_user_tables
         WHERE schemaname = 'taskd' AND relname = 'subtasks') AS subtasks_dead_tuples,
       (SELECT max(version) FROM taskd.schema_migrations) AS schema_version,
       now() AS now;

-- name: stats_snapshot
-- One cheap query for the metrics' stats collector: the backlog per queue and status
-- (ready, scheduled, processing), the oldest ready subtask's age, executors by status, and
-- whether each known queue is paused.
SELECT 'queue' AS kind, queue, 'ready' AS status, count(*)::float8 AS value,
       extract(epoch FROM now() - min(run_after))::float8 AS oldest_seconds
  FROM taskd.subtasks
 WHERE status = 'pending' AND run_after <= now()
 GROUP BY queue
UNION ALL
SELECT 'queue', queue, 'scheduled', count(*)::float8, NULL
  FROM taskd.subtasks
 WHERE status = 'pending' AND run_after > now()
 GROUP BY queue
UNION ALL
SELECT 'queue', queue, 'processing', count(*)::float8, NULL
  FROM taskd.subtasks
 WHERE status = 'processing' AND lease_expires_at IS NOT NULL  -- subtasks_lease_idx
 GROUP BY queue
UNION ALL
SELECT 'executor', NULL, status, count(*)::float8, NULL
  FROM taskd.executors
 GROUP BY status
UNION ALL
SELECT 'paused', queue, NULL, paused::integer::float8, NULL
  FROM taskd.queue_controls;

-- name: list_tasks
-- Tasks newest first, optionally filtered by status and queue; `before_id` pages backwards.
SELECT id, name, queue, kind, priority, user_id, params, status, total, completed, failed,
       cancelled, quota_cost, created_at, updated_at, completed_at
  FROM taskd.tasks
 WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: task_waits_for
-- The unfinished tasks a task still waits for (after => ...), in id order.
SELECT depends_on FROM taskd.task_dependencies WHERE task_id = %(task_id)s ORDER BY depends_on;

-- name: task_subtask_counts
-- A task's subtasks by status: ready, scheduled and waiting (for its dependencies) told apart.
SELECT CASE WHEN s.status = 'pending' AND s.run_after = 'infinity' THEN 'waiting'
            WHEN s.status = 'pending' AND s.run_after > now() THEN 'scheduled'
            WHEN s.status = 'pending' THEN 'ready'
            ELSE s.status END AS status,
       count(*) AS count
  FROM taskd.tasks t
  JOIN taskd.subtasks s
    ON s.id BETWEEN t.first_subtask_id AND t.last_subtask_id AND s.task_id = t.id
 WHERE t.id = %(task_id)s
 GROUP BY 1
 ORDER BY 1;

-- name: task_first_failure
-- The first failed subtask of a task, in id order: its id range of the primary key.
SELECT s.id, s.error
  FROM taskd.tasks t
  JOIN taskd.subtasks s
    ON s.id BETWEEN t.first_subtask_id AND t.last_subtask_id AND s.task_id = t.id
 WHERE t.id = %(task_id)s AND s.status = 'failed'
 ORDER BY s.id
 LIMIT 1;

-- name: oldest_unstarted_tasks
-- Per queue, the age of the oldest task that nobody has started, counted from when it became
-- runnable (its creation, its earliest pending run_after or its queue's resume, whichever is
-- later): what the pending timeout measures
-- (fail_unstarted_tasks). Among each queue's 100 oldest pending tasks (tasks_unstarted_idx: a
-- task is pending until its first subtask starts), so that neither a long backlog nor a long
-- run of started tasks ahead of them costs more than a bounded read.
SELECT q.queue, extract(epoch FROM now() - min(u.runnable_at))::float8 AS oldest_seconds
  FROM unnest(%(queues)s::text[]) AS q(queue)
 CROSS JOIN LATERAL (
    SELECT greatest(t.created_at,
                    (SELECT min(s.run_after) FROM taskd.subtasks s
                      WHERE s.id BETWEEN t.first_subtask_id AND t.last_subtask_id
                        AND s.task_id = t.id AND s.status = 'pending'),
                    -- the time a queue was paused does not count
                    (SELECT c.resumed_at FROM taskd.queue_controls c
                      WHERE c.queue = q.queue)) AS runnable_at
      FROM taskd.tasks t
     WHERE t.queue = q.queue
       AND t.status = 'pending'
     ORDER BY t.created_at
     LIMIT 100
 ) u
 WHERE u.runnable_at <= now()
 GROUP BY q.queue;

-- name: table_health
-- Storage of taskd's tables for the stats collector and `taskd status`: statistics views and
-- file sizes only (pg_relation_size stats one file per segment), never a scan of a table.
-- vacuum_age_seconds: since the last vacuum or autovacuum, or since the server started when
-- none ran since (the statistics begin then).
SELECT 'table' AS kind, s.relname AS name, s.relname AS table_name,
       s.n_live_tup AS live_tuples, s.n_dead_tup AS dead_tuples,
       pg_relation_size(s.relid) AS size_bytes,
       extract(epoch FROM now() - coalesce(greatest(s.last_vacuum, s.last_autovacuum),
                                           pg_postmaster_start_time()))::float8
           AS vacuum_age_seconds,
       s.vacuum_count + s.autovacuum_count AS vacuums
  FROM pg_stat_user_tables s
 WHERE s.schemaname = 'taskd'
UNION ALL
SELECT 'index', i.indexrelname, i.relname, NULL, NULL, pg_relation_size(i.indexrelid),
       NULL, NULL
  FROM pg_stat_user_indexes i
 WHERE i.schemaname = 'taskd'
UNION ALL
-- Sessions of this database by state; another role's sessions show state NULL ("hidden")
-- unless the reader has pg_read_all_stats.
SELECT 'connections', coalesce(a.state, 'hidden'), NULL, count(*), NULL, NULL, NULL, NULL
  FROM pg_stat_activity a
 WHERE a.datname = current_database() AND a.backend_type = 'client backend'
 GROUP BY a.state;
