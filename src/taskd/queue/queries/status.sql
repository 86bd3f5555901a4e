-- Read-only queries for operators (`taskd status`).

-- name: queue_overview
SELECT queue,
       count(*) FILTER (WHERE status = 'pending' AND run_after <= now()) AS ready,
       count(*) FILTER (WHERE status = 'pending' AND run_after > now()) AS scheduled,
       count(*) FILTER (WHERE status = 'processing') AS processing,
       extract(epoch FROM now() - min(run_after) FILTER (
           WHERE status = 'pending' AND run_after <= now()))::float8 AS oldest_pending_seconds
  FROM taskd.subtasks
 WHERE status IN ('pending', 'processing')
 GROUP BY queue
 ORDER BY queue;

-- name: executor_overview
SELECT id, executor_group, hostname, pid, version, status, started_at,
       extract(epoch FROM now() - last_heartbeat_at)::float8 AS heartbeat_age_seconds,
       concurrency, running, metrics_url
  FROM taskd.executors
 WHERE status <> 'stopped' OR stopped_at > now() - interval '1 hour'
 ORDER BY executor_group, id;
