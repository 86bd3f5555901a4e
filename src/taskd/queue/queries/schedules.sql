-- Schedules (cron): what the ticker reads and writes, and what `taskd schedules` and the admin
-- API change. The ticks' times are computed by the caller from database_now / ticker_schedules'
-- now; taskd.schedule_tick makes each one's task exactly once.

-- name: ticker_schedules
-- The enabled schedules and the database clock, for one pass of a ticker.
SELECT s.name, s.cron, s.timezone, s.missed, s.catch_up, s.ticks_from, s.last_tick,
       now() AS now
  FROM taskd.schedules s
 WHERE s.enabled
 ORDER BY s.name;

-- name: schedule_tick
-- The task of one tick, created once across every daemon; NULL: created before, or paused.
SELECT taskd.schedule_tick(%(schedule)s, %(tick)s::timestamptz) AS task_id;

-- name: schedule_run_now
-- A task of the schedule now, outside its ticks (`taskd schedules run-now`): the last task,
-- not the last tick, so that no tick is skipped for it.
WITH s AS (
    SELECT * FROM taskd.schedules WHERE name = %(schedule)s
), task AS (
    SELECT taskd.submit_task(
        queue => s.queue, kind => s.kind, payloads => s.payloads, name => s.name,
        priority => s.priority,
        params => s.params || jsonb_build_object('schedule', s.name, 'run_now', now()),
        max_attempts => s.max_attempts) AS task_id
      FROM s
)
UPDATE taskd.schedules sc
   SET last_task_id = task.task_id, updated_at = now()
  FROM task
 WHERE sc.name = %(schedule)s
RETURNING task.task_id;

-- name: upsert_schedule
-- Create a schedule, or (replace) change its definition. A change of the expression or the
-- time zone starts its ticks afresh from now; `enabled` is kept (pause and resume decide).
INSERT INTO taskd.schedules AS sc (name, cron, timezone, queue, kind, payloads, params, priority,
                                   max_attempts, enabled, missed, catch_up, source)
VALUES (%(name)s, %(cron)s, %(timezone)s, %(queue)s, %(kind)s, %(payloads)s::jsonb,
        %(params)s::jsonb, %(priority)s, %(max_attempts)s, %(enabled)s, %(missed)s,
        %(catch_up)s, %(source)s)
ON CONFLICT (name) DO UPDATE
   SET cron = excluded.cron, timezone = excluded.timezone, queue = excluded.queue,
       kind = excluded.kind, payloads = excluded.payloads, params = excluded.params,
       priority = excluded.priority, max_attempts = excluded.max_attempts,
       missed = excluded.missed, catch_up = excluded.catch_up, source = excluded.source,
       ticks_from = CASE WHEN (sc.cron, sc.timezone) IS DISTINCT FROM
                              (excluded.cron, excluded.timezone)
                         THEN now() ELSE sc.ticks_from END,
       updated_at = now()
 WHERE %(replace)s
RETURNING (xmax = 0) AS created;

-- name: set_schedule_enabled
-- Pause or resume. A resumed schedule's ticks start from now: the paused time is not caught up.
UPDATE taskd.schedules
   SET enabled = %(enabled)s,
       ticks_from = CASE WHEN %(enabled)s AND NOT enabled THEN now() ELSE ticks_from END,
       updated_at = now()
 WHERE name = %(name)s
RETURNING name;

-- name: delete_schedule
-- A schedule and its tick history; the tasks it made stay.
DELETE FROM taskd.schedules WHERE name = %(name)s RETURNING name;

-- name: list_schedules
-- Every schedule (or one), its last tick and its last task's outcome, with the database clock.
SELECT s.name, s.cron, s.timezone, s.queue, s.kind, s.payloads, s.params, s.priority,
       s.max_attempts, s.enabled, s.missed, s.catch_up, s.source, s.ticks_from, s.last_tick,
       s.last_task_id, t.status AS last_task_status, t.completed_at AS last_task_completed_at,
       s.created_at, s.updated_at, now() AS now
  FROM taskd.schedules s
  LEFT JOIN taskd.tasks t ON t.id = s.last_task_id
 WHERE %(name)s::text IS NULL OR s.name = %(name)s
 ORDER BY s.name;

-- name: prune_schedule_ticks
-- Tick rows older than the retention, a batch at a time; schedules keep their last_tick.
DELETE FROM taskd.schedule_ticks
 WHERE ctid = ANY(ARRAY(
       SELECT ctid FROM taskd.schedule_ticks
        WHERE tick < now() - make_interval(secs => %(older_than)s)
        LIMIT %(limit)s))
RETURNING 1;
