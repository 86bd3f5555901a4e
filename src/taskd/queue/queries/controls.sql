-- Queue controls: pause and resume, and the rate limit's window (queue_controls; the claim
-- itself reads and counts in claim_subtasks).

-- name: register_queues
-- The queues a daemon serves, each with its rate limit (NULL: none), recorded at its start:
-- a row is what makes a queue known to pause_queue, and what a rate-limited claim counts in.
INSERT INTO taskd.queue_controls AS c (queue, rate_limit, rate_period)
SELECT q.queue, q.rate_limit, q.rate_period
  FROM unnest(%(queues)s::text[], %(rate_limits)s::integer[], %(rate_periods)s::integer[])
       AS q(queue, rate_limit, rate_period)
 ORDER BY q.queue  -- rows locked in one order by every daemon: no deadlock
ON CONFLICT (queue) DO UPDATE
   SET rate_limit = excluded.rate_limit,
       rate_period = excluded.rate_period,
       -- a window counted with another period means nothing under this one
       rate_window_start = CASE WHEN c.rate_period IS NOT DISTINCT FROM excluded.rate_period
                                THEN c.rate_window_start END,
       updated_at = now()
 WHERE (c.rate_limit, c.rate_period) IS DISTINCT FROM (excluded.rate_limit, excluded.rate_period);

-- name: known_queue
-- A configured queue that no daemon has served yet becomes known (for pause / resume).
INSERT INTO taskd.queue_controls (queue) VALUES (%(queue)s) ON CONFLICT (queue) DO NOTHING;

-- name: pause_queue
SELECT taskd.pause_queue(%(queue)s, %(paused_by)s) AS changed;

-- name: resume_queue
SELECT taskd.resume_queue(%(queue)s) AS changed;

-- name: list_queue_controls
-- Every known queue with its controls; used: the starts counted in the current window.
SELECT c.queue, c.paused, c.paused_at, c.paused_by, c.resumed_at, c.rate_limit, c.rate_period,
       CASE WHEN c.rate_window_start
                 = date_bin(make_interval(secs => c.rate_period), now(), timestamptz 'epoch')
            THEN c.rate_window_count ELSE 0 END AS rate_window_used
  FROM taskd.queue_controls c
 ORDER BY c.queue;

-- name: rate_limit_wait
-- After a claim that took fewer than it asked for: seconds until the queue's window has room
-- again (0: it has room now, the backlog ran out). No row: nothing (the queue is not known).
SELECT CASE WHEN c.rate_window_start = w.start AND c.rate_window_count >= %(rate_limit)s
            THEN date_part('epoch', w.start + make_interval(secs => %(rate_period)s) - now())
            ELSE 0 END::float8 AS wait
  FROM taskd.queue_controls c,
       (SELECT date_bin(make_interval(secs => %(rate_period)s::integer), now(),
                        timestamptz 'epoch') AS start) w
 WHERE c.queue = %(queue)s;
