-- taskd schema, version 26: the executor's outcome batch planned once a session.
--
-- The daemon's sessions plan every statement for its parameters (plan_cache_mode =
-- force_custom_plan: the claim statements need it, their resume branches are planned away).
-- The outcome write paid for it too, ~0.2-0.3 ms of planning a statement whatever its size,
-- which is most of what a small batch costs: a completion of 3 outcomes took 0.77-0.79 ms,
-- 1,000 outcomes 11.2-11.4 ms. In this function the same statement keeps one generic plan a
-- session (the function's own plan_cache_mode): 0.57-0.64 ms for 3 outcomes, 10.8-11.6 ms for
-- 1,000 (no nested loop over the batch: rows are found by primary key from an id array).
--
-- enable_seqscan = off: a generic plan is made at the session's first call and kept until the
-- table's statistics change (ANALYZE, VACUUM). Made while subtasks held a few rows, it found
-- them by a sequential scan, and went on scanning as the table grew: measured, 10 outcomes
-- over 50,000 rows took 14 ms instead of 1. The counter trigger's statements, planned inside
-- this function, keep their plans the same way (tasks by a sequential scan). Off, every plan
-- made here reads subtasks and tasks through their indexes whatever their size then.
--
-- Fenced on (id, locked_by, attempt, processing): a row whose lease was lost matches nothing,
-- and its id is missing from what this returns. verdict is completed, failed, retry, snooze
-- (retry later without spending the attempt) or cancelled. The failures of the outcomes
-- applied go to error_logs in the same statement: both are recorded, or neither. at_time NULL
-- is the database clock (tests pass a time to move it).
--
-- SECURITY INVOKER, so EXECUTE stays with PUBLIC: a caller needs UPDATE on taskd.subtasks and
-- INSERT and UPDATE on taskd.error_logs (the executor role's grants) for it to do anything.

CREATE FUNCTION taskd.record_outcomes(executor text, batch jsonb, at_time timestamptz DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY
    WITH outcome AS (
        -- One JSON document for the batch, failures included: one string built in the executor
        -- instead of arrays dumped element by element.
        SELECT *
          FROM jsonb_to_recordset(batch)
               AS o(id bigint, attempt integer, verdict text, result jsonb, error text,
                    delay float8, error_type text, message text, n bigint, stack_trace text,
                    queue text, kind text)
    ), recorded AS (
        UPDATE taskd.subtasks s
           -- A retry of a subtask whose task was cancelled meanwhile ends it: never run it again.
           SET status = CASE WHEN o.verdict NOT IN ('retry', 'snooze') THEN o.verdict
                             WHEN s.cancel_requested THEN 'cancelled'
                             ELSE 'pending' END,
               result = o.result,
               error = o.error,
               attempt = CASE WHEN o.verdict = 'snooze' THEN s.attempt - 1 ELSE s.attempt END,
               run_after = CASE WHEN o.verdict IN ('retry', 'snooze')
                                THEN coalesce(at_time, now()) + make_interval(secs => o.delay)
                                ELSE s.run_after END,
               locked_by = NULL,
               lease_expires_at = NULL,
               completed_at = CASE WHEN o.verdict IN ('completed', 'failed', 'cancelled')
                                        OR s.cancel_requested
                                   THEN coalesce(at_time, now()) END,
               updated_at = coalesce(at_time, now())
          FROM outcome o
         -- Rows by primary key from an id array the planner cannot size (as in the claim):
         -- joined on o.id alone, a table not yet analyzed got a nested loop over a sequential scan.
         WHERE s.id = ANY(ARRAY(SELECT id FROM outcome))
           AND s.id = o.id
           AND s.locked_by = executor
           AND s.attempt = o.attempt
           AND s.status = 'processing'
        RETURNING s.id
    ), failures AS (
        -- One row per (type, message), in a fixed order so that batches written at once lock
        -- their error rows in the same order. The newest stack trace is kept.
        INSERT INTO taskd.error_logs AS e
               (error_type, error_message, count, stack_trace, queue, kind,
                first_occurred_at, last_occurred_at)
        SELECT left(o.error_type, 200), left(o.message, 500), sum(o.n), max(o.stack_trace),
               max(o.queue), max(o.kind), coalesce(at_time, now()), coalesce(at_time, now())
          FROM outcome o
          JOIN recorded r ON r.id = o.id
         WHERE o.error_type IS NOT NULL
         GROUP BY 1, 2
         ORDER BY 1, 2
        ON CONFLICT (error_type, error_message) DO UPDATE
           SET count = e.count + excluded.count,
               stack_trace = coalesce(excluded.stack_trace, e.stack_trace),
               queue = excluded.queue,
               kind = excluded.kind,
               last_occurred_at = excluded.last_occurred_at
    )
    SELECT id FROM recorded;
END;
$$;
