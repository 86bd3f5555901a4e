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
       -- the recorded claims stay: they are starts, whatever the period they are counted in
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
-- Every known queue with its controls; used: the starts counted in the window ending now.
SELECT c.queue, c.paused, c.paused_at, c.paused_by, c.resumed_at, c.rate_limit, c.rate_period,
       coalesce(taskd.rate_window_used(c.rate_claimed_at, c.rate_claimed,
                                       now() - make_interval(secs => c.rate_period)), 0)
           AS rate_window_used
  FROM taskd.queue_controls c
 ORDER BY c.queue;

-- name: rate_limit_wait
-- After a claim that took fewer than it asked for: seconds until the queue's window has room
-- again (0: it has room now, the backlog ran out), i.e. until enough of its oldest claims are
-- a period old that fewer than rate_limit starts remain. No row: nothing (the queue is not
-- known). The clock is read here, as the claim reads it: after its transaction began.
SELECT coalesce((
           SELECT date_part('epoch', min(w.t) FILTER (WHERE w.used - w.upto < %(rate_limit)s)
                                     + make_interval(secs => %(rate_period)s)
                                     - clock_timestamp())
             FROM (SELECT e.t, sum(e.n) OVER (ORDER BY e.t) AS upto, sum(e.n) OVER () AS used
                     FROM unnest(c.rate_claimed_at, c.rate_claimed) AS e(t, n)
                    WHERE e.t > clock_timestamp() - make_interval(secs => %(rate_period)s)) w
            WHERE w.used >= %(rate_limit)s), 0)::float8 AS wait
  FROM taskd.queue_controls c
 WHERE c.queue = %(queue)s;
