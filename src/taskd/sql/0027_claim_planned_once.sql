-- taskd schema, version 27: the executor's plain claim planned once a session.
--
-- The daemon's sessions plan every statement for its parameters (plan_cache_mode =
-- force_custom_plan), and the claim statement paid ~0.25 ms of planning each run, most of
-- what a claim of one subtask costs, on the path from a notification to the start. This
-- function is the claim of one queue without a rate limit or a cluster_max (the executor's
-- plain claim; the others keep their statements): the same rows, order, lease and fences as
-- the statement claim_subtasks, in three branches of which its arguments' one-time filters
-- leave the ones that apply (as claim_subtasks_of_queues has): from the claim index's head
-- when there is no resume point; else the resume point's priority after it, then lower
-- priorities. Each branch is an index range of subtasks_claim_idx, so the plan is the same
-- for any arguments and the function keeps one generic plan a session.
--
-- enable_seqscan = off, as in version 26: the generic plan is kept from the session's first
-- call until the table's statistics change; made while subtasks held a few rows, the UPDATE
-- found the claimed rows by a sequential scan and went on doing so as the table grew (a claim
-- of 10 over 50,000 rows: 17 ms instead of 1.5). Off, the plan keeps to the indexes.
--
-- SECURITY INVOKER, so EXECUTE stays with PUBLIC: a caller needs UPDATE on taskd.subtasks
-- (the executor role's grants) for it to claim anything.

CREATE FUNCTION taskd.claim_subtasks(
    claim_queue text, executor text, claim_limit integer, lease_seconds float8,
    suspect_after integer, after_priority integer DEFAULT NULL,
    after_run_after timestamptz DEFAULT NULL, after_id bigint DEFAULT NULL,
    at_time timestamptz DEFAULT NULL)
RETURNS TABLE (id bigint, task_id bigint, queue text, kind text, priority integer,
               payload jsonb, state jsonb, attempt integer, max_attempts integer,
               run_after timestamptz, wait double precision)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT h.id FROM (
            SELECT s.id
              FROM taskd.subtasks s
             WHERE after_id IS NULL
               AND s.status = 'pending'
               AND s.queue = claim_queue
               AND s.run_after <= coalesce(at_time, now())
               AND s.crashes < suspect_after  -- a suspected poison pill runs alone
             ORDER BY s.priority DESC, s.run_after, s.id
             LIMIT claim_limit
               FOR UPDATE SKIP LOCKED
        ) h
        UNION ALL
        SELECT r.id FROM (
            SELECT s.id
              FROM taskd.subtasks s
             WHERE s.status = 'pending'
               AND s.queue = claim_queue
               AND s.run_after <= coalesce(at_time, now())
               AND s.crashes < suspect_after
               AND s.priority = after_priority
               AND (s.run_after, s.id) > (after_run_after, after_id)
             ORDER BY s.priority DESC, s.run_after, s.id
             LIMIT claim_limit
               FOR UPDATE SKIP LOCKED
        ) r
        UNION ALL
        SELECT l.id FROM (
            SELECT s.id
              FROM taskd.subtasks s
             WHERE s.status = 'pending'
               AND s.queue = claim_queue
               AND s.run_after <= coalesce(at_time, now())
               AND s.crashes < suspect_after
               AND s.priority < after_priority
             ORDER BY s.priority DESC, s.run_after, s.id
             LIMIT claim_limit
               FOR UPDATE SKIP LOCKED
        ) l
        -- Rows are locked as this limit takes them: none beyond it. A paused queue: none.
         LIMIT CASE WHEN EXISTS (SELECT 1 FROM taskd.queue_controls c
                                  WHERE c.queue = claim_queue AND c.paused) THEN 0
                    ELSE claim_limit END
    ), claimed AS (
        UPDATE taskd.subtasks s
           SET status = 'processing',
               locked_by = executor,
               attempt = s.attempt + 1,
               lease_expires_at = coalesce(at_time, now()) + make_interval(secs => lease_seconds),
               started_at = coalesce(at_time, now()),
               updated_at = coalesce(at_time, now())
         -- An id array, not a join, as in the statement.
         WHERE s.id = ANY(ARRAY(SELECT p.id FROM picked p))
        RETURNING s.id, s.task_id, s.queue, s.kind, s.priority, s.payload, s.state, s.attempt,
                  s.max_attempts, s.run_after,
                  -- seconds from ready to started: one float to read, not two timestamps
                  date_part('epoch', s.started_at - s.run_after)
    )
    -- Claim order, sorted here: cheaper than in the executor.
    SELECT * FROM claimed c ORDER BY c.priority DESC, c.run_after, c.id;
END;
$$;

-- The counter trigger, fired inside the claim and the completion, would take their
-- enable_seqscan = off, and its statements (generic plans, kept from their first run in a
-- session: they have no parameters) read tasks through a whole index scan in place of a
-- sequential one, worse as dead index entries pile up: bench ceiling's PostgreSQL CPU a
-- subtask 53-60 -> 61-65 us. It keeps the server's setting.
ALTER FUNCTION taskd.subtasks_count_outcomes() SET enable_seqscan = on;
