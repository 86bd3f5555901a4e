-- The scaler's queries: each executor's scaler reads every queue's ready backlog in one
-- statement and records its own limits on its executor row.

-- name: scaler_ready_backlog
-- Ready pending subtasks per queue, counted up to each queue's cap: past 2 * max + 1 no
-- decision changes, and stopping there keeps one check as cheap with a million pending rows as
-- with a hundred. The ORDER BY is the claim index's (subtasks_claim_idx): without it the
-- planner, which cannot tell queues apart, picks a sequential scan that reads the whole table
-- for a queue with no rows.
SELECT q.queue,
       (SELECT count(*)
          FROM (SELECT 1
                  FROM taskd.subtasks s
                 WHERE s.status = 'pending'
                   AND s.queue = q.queue
                   AND s.run_after <= coalesce(%(now)s::timestamptz, now())
                 ORDER BY s.priority DESC, s.run_after, s.id
                 LIMIT q.cap) AS ready) AS ready
  FROM unnest(%(queues)s::text[], %(caps)s::bigint[]) AS q(queue, cap);

-- name: scaler_record_concurrency
-- This executor's current limit per queue, so that `taskd status` shows it at once rather than
-- at the next heartbeat.
UPDATE taskd.executors
   SET concurrency = %(concurrency)s
 WHERE id = %(id)s
RETURNING id;
