-- taskd schema, version 20: the pending timeout reads only the tasks nobody started.
--
-- The pending timeout (fail_unstarted_tasks) and its clock in the statistics pass
-- (oldest_unstarted_tasks) looked for unstarted tasks among a queue's unfinished ones
-- (tasks_unfinished_idx), checking each one's subtasks: behind a long run of started but
-- unfinished tasks (a backlog's big tasks part-way done, long external jobs) both read past
-- every one of them, each pass: with 20,000 such tasks, 758 pages (10 ms) for the statistics
-- pass and 20,483 pages (20 ms) for each rescuer pass of the queue; with this index, 9 and 39
-- (tests/integration/test_unstarted_reads.py). A task is `pending` exactly until its first subtask starts (the
-- counter trigger moves it to `processing` then, and nothing moves it back), so an index of the
-- pending tasks holds just the candidates: a few pages whatever runs ahead of them.
--
-- A retried task whose subtasks never started (one the pending timeout failed) goes back to
-- pending too, so that the timeout still finds it: the counter trigger below is 0014's with
-- that one case added (back_unstarted).
--
-- The cost: a task's first start is no longer a HOT update (its status is in this index's
-- predicate); its end never was (completed_at is indexed).

DROP INDEX taskd.tasks_unfinished_idx;
CREATE INDEX tasks_unstarted_idx ON taskd.tasks (queue, created_at) WHERE status = 'pending';

CREATE OR REPLACE FUNCTION taskd.subtasks_count_outcomes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ended_ids  bigint[];
    may_notify boolean;
BEGIN
    -- Per task: +1 for each row after the statement, -1 for each row before it, by status.
    -- Rows whose status did not change cancel out. Never a join of old_rows to new_rows:
    -- plpgsql keeps a session's first plan, and one made for a one-row statement joined the
    -- next 450-row batches in a nested loop (12.6 ms instead of 3.3 ms each).
    WITH moves AS (
        SELECT task_id, status, 1 AS d, started_at IS NULL AS never_started FROM new_rows
        UNION ALL
        SELECT task_id, status, -1 AS d, NULL FROM old_rows
    ), changes AS (
        SELECT task_id,
               coalesce(sum(d) FILTER (WHERE status = 'completed'), 0) AS d_completed,
               coalesce(sum(d) FILTER (WHERE status = 'failed'), 0) AS d_failed,
               coalesce(sum(d) FILTER (WHERE status = 'cancelled'), 0) AS d_cancelled,
               coalesce(bool_or(d = 1 AND status = 'processing'), false) AS started,
               count(*) FILTER (WHERE d = 1 AND status = 'pending' AND never_started)
                   AS back_unstarted
          FROM moves
         GROUP BY task_id
    ), locked AS (
        -- Lock in id order, so that concurrent batches over the same tasks cannot deadlock.
        SELECT t.id
          FROM taskd.tasks t
          JOIN changes c ON c.task_id = t.id
         WHERE c.d_completed <> 0 OR c.d_failed <> 0 OR c.d_cancelled <> 0
            OR (c.started AND t.status = 'pending')
         ORDER BY t.id
           FOR NO KEY UPDATE OF t
    ), updated AS (
        -- Counters are computed from the target row itself, never from a CTE: after waiting
        -- for the row lock, the UPDATE re-reads the newest version, so concurrent batches add up.
        UPDATE taskd.tasks t
           SET completed = t.completed + c.d_completed,
               failed = t.failed + c.d_failed,
               cancelled = t.cancelled + c.d_cancelled,
               status = CASE
                   WHEN t.completed + c.d_completed + t.failed + c.d_failed
                        + t.cancelled + c.d_cancelled >= t.total THEN
                       CASE WHEN t.failed + c.d_failed > 0 THEN 'failed'
                            WHEN t.cancelled + c.d_cancelled > 0 THEN 'cancelled'
                            ELSE 'completed' END
                   WHEN t.status = 'pending' AND NOT c.started
                        AND t.completed + c.d_completed + t.failed + c.d_failed
                            + t.cancelled + c.d_cancelled = 0 THEN 'pending'
                   -- Every subtask back to pending and none ever started (a retry of a task
                   -- that timed out waiting): pending again, and the pending timeout's again.
                   WHEN c.back_unstarted = t.total THEN 'pending'
                   ELSE 'processing' END,
               completed_at = CASE WHEN t.completed + c.d_completed + t.failed + c.d_failed
                                        + t.cancelled + c.d_cancelled >= t.total
                                   THEN now() END,
               updated_at = now()
          FROM changes c
         WHERE t.id = c.task_id
           AND t.id IN (SELECT id FROM locked)
        -- RETURNING sees the new counters: finished now, and not before this statement.
        RETURNING t.id, t.status, t.notify_url, t.notify_on,
                  t.completed + t.failed + t.cancelled >= t.total
                  AND t.completed + t.failed + t.cancelled
                      - c.d_completed - c.d_failed - c.d_cancelled < t.total AS ends_here
    )
    -- may_notify: an end that some target may want. A completed task whose own target does
    -- not ask for completions can only match a route that does (checked below, once): the
    -- common case, tasks completing, costs an aggregate and no join.
    SELECT array_agg(u.id),
           coalesce(bool_or(u.status <> 'completed'
                            OR (u.notify_url IS NOT NULL AND 'completed' = ANY (u.notify_on))),
                    false)
      INTO ended_ids, may_notify
      FROM updated u
     WHERE u.ends_here;
    IF ended_ids IS NOT NULL THEN
        IF may_notify OR EXISTS (SELECT 1 FROM taskd.notify_routes r
                                  WHERE 'completed' = ANY (r.notify_on)) THEN
            -- The transactional outbox: in the statement that ends the task, so the end and
            -- its notifications commit together. Targets: the task's own (else its queue's
            -- default) and the operator's ('*'); one row per distinct URL.
            INSERT INTO taskd.notifications (task_id, url, event)
            SELECT e.id, e.notify_url, e.status
              FROM taskd.tasks e
             WHERE e.id = ANY (ended_ids)
               AND e.notify_url IS NOT NULL AND e.status = ANY (e.notify_on)
            UNION
            SELECT e.id, r.url, e.status
              FROM taskd.tasks e
              JOIN taskd.notify_routes r
                ON (r.scope = '*' OR (r.scope = e.queue AND e.notify_url IS NULL))
               AND e.status = ANY (r.notify_on)
             WHERE e.id = ANY (ended_ids);
        END IF;
        -- Whoever waits for a task's end LISTENs on taskd_task_end (docs/sql.md).
        PERFORM pg_notify('taskd_task_end', e::text) FROM unnest(ended_ids) AS e;
    END IF;
    RETURN NULL;
END;
$$;
