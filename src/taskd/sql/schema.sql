-- The canonical taskd schema: what applying every migration in order produces.
-- A test (tests/integration/test_migrations.py) proves the two give the same structure;
-- change both together. Load it only into an empty database: it records itself as migrated.

CREATE SCHEMA taskd;

CREATE TABLE taskd.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE taskd.tasks (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL DEFAULT '',
    queue           text NOT NULL CONSTRAINT tasks_queue_check
                        CHECK (queue ~ '^[a-z][a-z0-9_-]*$' AND length(queue) <= 63),
    kind            text NOT NULL CONSTRAINT tasks_kind_check
                        CHECK (kind ~ '^[A-Za-z0-9_.:-]+$' AND length(kind) <= 200),
    priority        integer NOT NULL DEFAULT 0 CONSTRAINT tasks_priority_check
                        CHECK (priority BETWEEN -1000 AND 1000),
    user_id         text,
    params          jsonb NOT NULL DEFAULT '{}'::jsonb,
    status          text NOT NULL DEFAULT 'pending' CONSTRAINT tasks_status_check
                        CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    total           integer NOT NULL CONSTRAINT tasks_total_check CHECK (total BETWEEN 1 AND 100000),
    completed       integer NOT NULL DEFAULT 0 CHECK (completed >= 0),
    failed          integer NOT NULL DEFAULT 0 CHECK (failed >= 0),
    cancelled       integer NOT NULL DEFAULT 0 CHECK (cancelled >= 0),
    -- Quota taken when the task was created through the API; refunded once if the task fails.
    quota_cost      integer NOT NULL DEFAULT 0 CHECK (quota_cost >= 0),
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    -- The lowest and highest id of its subtasks (set by submit_task): a task's subtasks are
    -- a range of the primary key, so subtasks needs no index on task_id.
    first_subtask_id bigint,
    last_subtask_id bigint,
    -- The W3C traceparent of the span that submitted the task (OpenTelemetry), or NULL.
    traceparent     text,
    CONSTRAINT tasks_counters_check CHECK (completed + failed + cancelled <= total),
    CONSTRAINT tasks_subtask_ids_check CHECK (first_subtask_id <= last_subtask_id)
);

CREATE UNIQUE INDEX tasks_idempotency_idx ON taskd.tasks (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_user_idx ON taskd.tasks (user_id, id DESC) WHERE user_id IS NOT NULL;
CREATE INDEX tasks_finished_idx ON taskd.tasks (completed_at) WHERE completed_at IS NOT NULL;
-- Unfinished tasks by age, for the pending timeout.
CREATE INDEX tasks_unfinished_idx ON taskd.tasks (queue, created_at) WHERE completed_at IS NULL;

CREATE TABLE taskd.subtasks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- No foreign key (it would need an index on task_id): submit_task is the one writer, and
    -- tasks_delete_subtasks cascades deletes by the task's id range.
    task_id          bigint NOT NULL,
    queue            text NOT NULL,
    kind             text NOT NULL,
    priority         integer NOT NULL DEFAULT 0,
    status           text NOT NULL DEFAULT 'pending' CONSTRAINT subtasks_status_check
                         CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    payload          jsonb NOT NULL DEFAULT '{}'::jsonb,
    state            jsonb,
    result           jsonb,
    error            text,
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     integer NOT NULL DEFAULT 4 CHECK (max_attempts >= 1),
    run_after        timestamptz NOT NULL DEFAULT now(),
    locked_by        text,
    lease_expires_at timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- Leases that expired under it (its executor crashed or froze): see the rescuer.
    crashes          integer NOT NULL DEFAULT 0,
    CONSTRAINT subtasks_lease_check CHECK ((status = 'processing') = (locked_by IS NOT NULL))
);

-- The claim index: only pending rows, so it stays small however many finished rows exist.
CREATE INDEX subtasks_claim_idx ON taskd.subtasks (queue, priority DESC, run_after, id)
    WHERE status = 'pending';
-- Subtasks that were running when an executor crashed or froze (suspects run alone).
CREATE INDEX subtasks_suspect_idx ON taskd.subtasks (queue, priority DESC, run_after, id)
    WHERE status = 'pending' AND crashes > 0;
-- Held leases by expiry, for the rescuer. Not on status = 'processing': fenced writes would
-- then scan it (and every dead entry in it) instead of finding their rows by primary key.
CREATE INDEX subtasks_lease_idx ON taskd.subtasks (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;
CREATE INDEX subtasks_finished_idx ON taskd.subtasks (completed_at)
    WHERE completed_at IS NOT NULL;

-- Vacuum after a fixed number of dead rows, whatever the history's size, unthrottled (0016):
-- every claim and completion leaves a dead row version and a dead claim-index entry.
ALTER TABLE taskd.subtasks SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 100000,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE taskd.tasks SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 100000,
    autovacuum_vacuum_cost_delay = 0
);

CREATE TABLE taskd.executors (
    id                text PRIMARY KEY,
    executor_group    text NOT NULL DEFAULT 'default',
    hostname          text NOT NULL,
    pid               integer NOT NULL,
    version           text NOT NULL,
    status            text NOT NULL DEFAULT 'running' CONSTRAINT executors_status_check
                          CHECK (status IN ('running', 'stopping', 'stopped', 'dead')),
    started_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at        timestamptz,
    concurrency       jsonb NOT NULL DEFAULT '{}'::jsonb,
    running           jsonb NOT NULL DEFAULT '{}'::jsonb,
    metrics_url       text
);

CREATE TABLE taskd.error_logs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    error_type        text NOT NULL,
    error_message     text NOT NULL,
    count             bigint NOT NULL DEFAULT 1 CHECK (count >= 1),
    stack_trace       text,
    queue             text,
    kind              text,
    first_occurred_at timestamptz NOT NULL DEFAULT now(),
    last_occurred_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT error_logs_key UNIQUE (error_type, error_message)
);

CREATE TABLE taskd.accounts (
    user_id         text PRIMARY KEY,
    is_member       boolean NOT NULL DEFAULT false,
    quota_remaining integer NOT NULL DEFAULT 0 CONSTRAINT accounts_quota_check
                        CHECK (quota_remaining >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE taskd.quota_ledger (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    text NOT NULL REFERENCES taskd.accounts (user_id),
    task_id    bigint,  -- no foreign key: the ledger outlives retention of finished tasks
    delta      integer NOT NULL,
    reason     text NOT NULL CONSTRAINT quota_ledger_reason_check
                   CHECK (reason IN ('deduct', 'refund', 'adjust')),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- A refund names the charge it gives back (a charge: a row of the task with delta < 0).
    refund_of  bigint REFERENCES taskd.quota_ledger (id),
    CONSTRAINT quota_ledger_refund_of_check CHECK (refund_of IS NULL OR reason = 'refund')
);

-- At most one refund per charge, whichever process gets there first.
CREATE UNIQUE INDEX quota_ledger_refund_idx ON taskd.quota_ledger (refund_of)
    WHERE refund_of IS NOT NULL;
CREATE INDEX quota_ledger_task_idx ON taskd.quota_ledger (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX quota_ledger_user_idx ON taskd.quota_ledger (user_id, id);

CREATE TABLE taskd.limits (
    -- One row: what taskd.submit_task enforces, whoever calls it.
    singleton         boolean PRIMARY KEY DEFAULT true CONSTRAINT limits_singleton_check
                          CHECK (singleton),
    max_payload_bytes integer NOT NULL DEFAULT 1048576 CONSTRAINT limits_max_payload_bytes_check
                          CHECK (max_payload_bytes BETWEEN 1 AND 268435455),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
INSERT INTO taskd.limits DEFAULT VALUES;

-- A task that ends failed gets back every charge of it that no refund matches yet (a charge
-- is a ledger row of the task with a negative delta), in the transaction that failed it.
CREATE FUNCTION taskd.refund_failed_task() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH refunds AS (
        INSERT INTO taskd.quota_ledger (user_id, task_id, delta, reason, refund_of)
        SELECT c.user_id, c.task_id, -c.delta, 'refund', c.id
          FROM taskd.quota_ledger c
         WHERE c.task_id = NEW.id AND c.delta < 0
           AND NOT EXISTS (SELECT 1 FROM taskd.quota_ledger r WHERE r.refund_of = c.id)
         ORDER BY c.id
        ON CONFLICT DO NOTHING
        RETURNING user_id, delta
    )
    UPDATE taskd.accounts a
       SET quota_remaining = a.quota_remaining + r.delta, updated_at = now()
      FROM (SELECT user_id, sum(delta)::integer AS delta FROM refunds GROUP BY user_id) r
     WHERE a.user_id = r.user_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_refund_on_failure
    AFTER UPDATE OF status ON taskd.tasks
    FOR EACH ROW
    WHEN (NEW.status = 'failed' AND OLD.status <> 'failed'
          AND NEW.quota_cost > 0 AND NEW.user_id IS NOT NULL)
    EXECUTE FUNCTION taskd.refund_failed_task();

-- Task counters and status follow their subtasks in every path (claim, completion, rescue,
-- timeout, cancel, retry, an operator's UPDATE), with at most one UPDATE per task per statement;
-- a task that a statement ends is announced on taskd_task_end (its id as the payload).
CREATE FUNCTION taskd.subtasks_count_outcomes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ended_ids bigint[];
BEGIN
    -- Per task: +1 for each row after the statement, -1 for each row before it, by status.
    -- Rows whose status did not change cancel out. Never a join of old_rows to new_rows:
    -- plpgsql keeps a session's first plan, and one made for a one-row statement joined the
    -- next 450-row batches in a nested loop (12.6 ms instead of 3.3 ms each).
    WITH moves AS (
        SELECT task_id, status, 1 AS d FROM new_rows
        UNION ALL
        SELECT task_id, status, -1 AS d FROM old_rows
    ), changes AS (
        SELECT task_id,
               coalesce(sum(d) FILTER (WHERE status = 'completed'), 0) AS d_completed,
               coalesce(sum(d) FILTER (WHERE status = 'failed'), 0) AS d_failed,
               coalesce(sum(d) FILTER (WHERE status = 'cancelled'), 0) AS d_cancelled,
               coalesce(bool_or(d = 1 AND status = 'processing'), false) AS started
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
                   ELSE 'processing' END,
               completed_at = CASE WHEN t.completed + c.d_completed + t.failed + c.d_failed
                                        + t.cancelled + c.d_cancelled >= t.total
                                   THEN now() END,
               updated_at = now()
          FROM changes c
         WHERE t.id = c.task_id
           AND t.id IN (SELECT id FROM locked)
        -- RETURNING sees the new counters: finished now, and not before this statement.
        RETURNING t.id,
                  t.completed + t.failed + t.cancelled >= t.total
                  AND t.completed + t.failed + t.cancelled
                      - c.d_completed - c.d_failed - c.d_cancelled < t.total AS ends_here
    )
    SELECT array_agg(u.id) INTO ended_ids FROM updated u WHERE u.ends_here;
    -- Whoever waits for a task's end LISTENs on taskd_task_end (docs/sql.md).
    IF ended_ids IS NOT NULL THEN
        PERFORM pg_notify('taskd_task_end', e::text) FROM unnest(ended_ids) AS e;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER subtasks_count_outcomes
    AFTER UPDATE ON taskd.subtasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION taskd.subtasks_count_outcomes();

-- A deleted task takes its subtasks with it, as the schema's owner (as a foreign key's
-- cascade did). task_id is never updated.
CREATE FUNCTION taskd.tasks_delete_subtasks() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM taskd.subtasks
     WHERE id BETWEEN OLD.first_subtask_id AND OLD.last_subtask_id AND task_id = OLD.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_delete_subtasks
    AFTER DELETE ON taskd.tasks
    FOR EACH ROW
    WHEN (OLD.first_subtask_id IS NOT NULL)
    EXECUTE FUNCTION taskd.tasks_delete_subtasks();

-- True when a JSON document (as text) nests arrays and objects deeper than max_depth.
-- Cheap for ordinary documents: only one with more opening brackets than max_depth is walked.
CREATE FUNCTION taskd.json_too_deep(doc text, max_depth integer) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    brackets text;
    depth    integer := 0;
    c        text;
BEGIN
    IF length(doc) - length(translate(doc, '[{', '')) <= max_depth THEN
        RETURN false;
    END IF;
    -- Brackets inside strings do not nest: drop the strings, then keep only brackets.
    brackets := regexp_replace(regexp_replace(doc, '"(?:[^"\\]|\\.)*"', '', 'g'),
                               '[^][{}]', '', 'g');
    FOREACH c IN ARRAY regexp_split_to_array(brackets, '') LOOP
        IF c = '[' OR c = '{' THEN
            depth := depth + 1;
            IF depth > max_depth THEN
                RETURN true;
            END IF;
        ELSE
            depth := depth - 1;
        END IF;
    END LOOP;
    RETURN false;
END;
$$;

-- insert_task: a task and its subtasks in one call, validated, then one wake-up for the queue;
-- what submit_task and submit_task_for_user do. Errors use SQLSTATE 22023
-- (invalid_parameter_value) with a message naming the argument. Called only by those two, as
-- their owner and with their search_path: no SECURITY DEFINER and no SET of its own (a SET
-- clause costs each call ~25 us), and PUBLIC may not execute it.
CREATE FUNCTION taskd.insert_task(
    user_id      text,
    queue        text,
    kind         text,
    payloads     jsonb,
    name         text,
    priority     integer,
    params       jsonb,
    max_attempts integer,
    run_after    timestamptz,
    traceparent  text
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n             integer;
    object_index  integer;
    bad_index     integer;
    deep_index    integer;
    new_id        bigint;
    first_id      bigint;
    last_id       bigint;
    params_doc    text;
    payload_doc   text;
    payload_limit integer;
BEGIN
    IF queue IS NULL OR queue !~ '^[a-z][a-z0-9_-]*$' OR length(queue) > 63 THEN
        RAISE EXCEPTION 'taskd: queue % is not a valid queue name (^[a-z][a-z0-9_-]{0,62}$)',
            coalesce(quote_literal(queue), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF kind IS NULL OR kind !~ '^[A-Za-z0-9_.:-]+$' OR length(kind) > 200 THEN
        RAISE EXCEPTION 'taskd: kind % is not a valid kind (letters, digits, _ . : -, at most 200)',
            coalesce(quote_literal(kind), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF priority IS NULL OR priority NOT BETWEEN -1000 AND 1000 THEN
        RAISE EXCEPTION 'taskd: priority % is outside -1000..1000', coalesce(priority::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF max_attempts IS NULL OR max_attempts < 1 OR max_attempts > 1000 THEN
        RAISE EXCEPTION 'taskd: max_attempts % is outside 1..1000', coalesce(max_attempts::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    -- W3C trace context: version-traceid-parentid-flags, lower-case hex; version ff, an all-zero
    -- trace id and an all-zero parent id are invalid.
    IF traceparent IS NOT NULL AND (
           traceparent !~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
           OR left(traceparent, 2) = 'ff'
           OR substr(traceparent, 4, 32) = repeat('0', 32)
           OR substr(traceparent, 37, 16) = repeat('0', 16)) THEN
        RAISE EXCEPTION 'taskd: traceparent % is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)',
            quote_literal(left(traceparent, 100)) USING ERRCODE = '22023';
    END IF;
    IF params IS NULL OR jsonb_typeof(params) <> 'object' THEN
        RAISE EXCEPTION 'taskd: params must be a JSON object' USING ERRCODE = '22023';
    END IF;
    params_doc := params::text;
    IF length(params_doc) - length(translate(params_doc, '[{', '')) > 500
       AND taskd.json_too_deep(params_doc, 500) THEN
        RAISE EXCEPTION 'taskd: params is nested deeper than 500 levels' USING ERRCODE = '22023';
    END IF;
    IF payloads IS NULL OR jsonb_typeof(payloads) <> 'array' THEN
        RAISE EXCEPTION 'taskd: payloads must be a JSON array of objects' USING ERRCODE = '22023';
    END IF;
    n := jsonb_array_length(payloads);
    IF n = 0 THEN
        RAISE EXCEPTION 'taskd: a task needs at least one subtask (payloads is empty)'
            USING ERRCODE = '22023';
    END IF;
    IF n > 100000 THEN
        RAISE EXCEPTION 'taskd: payloads holds % subtasks; at most 100000', n USING ERRCODE = '22023';
    END IF;
    -- The server's limit (taskd.limits, written by `taskd migrate`), never the caller's.
    payload_limit := coalesce((SELECT l.max_payload_bytes FROM taskd.limits l), 1048576);
    IF n = 1 THEN
        -- One payload, as most submits carry: expressions, no query over the array.
        payload_doc := (payloads->0)::text;
        object_index := CASE WHEN jsonb_typeof(payloads->0) <> 'object' THEN 1 END;
        bad_index := CASE WHEN octet_length(payload_doc) > payload_limit THEN 1 END;
        deep_index := CASE WHEN length(payload_doc) - length(translate(payload_doc, '[{', '')) > 500
                                AND taskd.json_too_deep(payload_doc, 500) THEN 1 END;
    ELSE
        -- One pass over the payloads for all three checks; the errors keep their order.
        SELECT min(ord) FILTER (WHERE NOT is_object),
               min(ord) FILTER (WHERE octet_length(doc) > payload_limit),
               -- The inline bracket count spares ordinary payloads a function call.
               min(ord) FILTER (WHERE length(doc) - length(translate(doc, '[{', '')) > 500
                                  AND taskd.json_too_deep(doc, 500))
          INTO object_index, bad_index, deep_index
          FROM (SELECT p.ord, jsonb_typeof(p.value) = 'object' AS is_object, p.value::text AS doc
                  FROM jsonb_array_elements(payloads) WITH ORDINALITY AS p(value, ord)) AS each_payload;
    END IF;
    IF object_index IS NOT NULL THEN
        RAISE EXCEPTION 'taskd: payloads[%] is not a JSON object', object_index - 1
            USING ERRCODE = '22023';
    END IF;
    IF bad_index IS NOT NULL THEN
        RAISE EXCEPTION 'taskd: payloads[%] is larger than % bytes', bad_index - 1, payload_limit
            USING ERRCODE = '22023';
    END IF;
    -- Deeper than this, executors could not decode it (Python's JSON decoder recurses).
    IF deep_index IS NOT NULL THEN
        RAISE EXCEPTION 'taskd: payloads[%] is nested deeper than 500 levels', deep_index - 1
            USING ERRCODE = '22023';
    END IF;

    -- The subtasks first, then their task with their id range (no UPDATE of the new row).
    new_id := nextval('taskd.tasks_id_seq');
    IF n = 1 THEN
        INSERT INTO taskd.subtasks (task_id, queue, kind, priority, payload, max_attempts,
                                    run_after)
        VALUES (new_id, insert_task.queue, insert_task.kind,
                insert_task.priority, payloads->0, insert_task.max_attempts,
                coalesce(insert_task.run_after, now()))
        RETURNING id INTO first_id;
        last_id := first_id;
    ELSE
        WITH inserted AS (
            INSERT INTO taskd.subtasks (task_id, queue, kind, priority, payload, max_attempts,
                                        run_after)
            SELECT new_id, insert_task.queue, insert_task.kind,
                   insert_task.priority, p.value, insert_task.max_attempts,
                   coalesce(insert_task.run_after, now())
              FROM jsonb_array_elements(payloads) WITH ORDINALITY AS p(value, ord)
             ORDER BY p.ord
            RETURNING id
        )
        SELECT min(id), max(id) INTO first_id, last_id FROM inserted;
    END IF;

    INSERT INTO taskd.tasks (id, name, queue, kind, priority, user_id, params, total,
                             first_subtask_id, last_subtask_id, traceparent)
    OVERRIDING SYSTEM VALUE
    VALUES (new_id, coalesce(insert_task.name, ''), insert_task.queue,
            insert_task.kind, insert_task.priority,
            insert_task.user_id, insert_task.params, n, first_id, last_id,
            insert_task.traceparent);

    PERFORM pg_notify('taskd', insert_task.queue);
    RETURN new_id;
END;
$$;
REVOKE ALL ON FUNCTION taskd.insert_task(text, text, text, jsonb, text, integer, jsonb, integer,
                                         timestamptz, text) FROM PUBLIC;

-- submit_task_for_user: a user's task (the API's). Only the API role may call it (roles.sql):
-- it sets who owns the task. As its owner: EXECUTE is all a submitting role needs.
CREATE FUNCTION taskd.submit_task_for_user(
    user_id      text,
    queue        text,
    kind         text,
    payloads     jsonb,
    name         text DEFAULT '',
    priority     integer DEFAULT 0,
    params       jsonb DEFAULT '{}'::jsonb,
    max_attempts integer DEFAULT 4,
    run_after    timestamptz DEFAULT NULL,
    traceparent  text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN taskd.insert_task(submit_task_for_user.user_id, submit_task_for_user.queue,
                             submit_task_for_user.kind, submit_task_for_user.payloads,
                             submit_task_for_user.name, submit_task_for_user.priority,
                             submit_task_for_user.params, submit_task_for_user.max_attempts,
                             submit_task_for_user.run_after, submit_task_for_user.traceparent);
END;
$$;
REVOKE ALL ON FUNCTION taskd.submit_task_for_user(text, text, text, jsonb, text, integer, jsonb,
                                                  integer, timestamptz, text) FROM PUBLIC;

-- submit_task: the door for SQL clients, a task without a user; the same rules and errors.
CREATE FUNCTION taskd.submit_task(
    queue        text,
    kind         text,
    payloads     jsonb,
    name         text DEFAULT '',
    priority     integer DEFAULT 0,
    params       jsonb DEFAULT '{}'::jsonb,
    max_attempts integer DEFAULT 4,
    run_after    timestamptz DEFAULT NULL,
    traceparent  text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN taskd.insert_task(NULL, submit_task.queue, submit_task.kind, submit_task.payloads,
                             submit_task.name, submit_task.priority, submit_task.params,
                             submit_task.max_attempts, submit_task.run_after,
                             submit_task.traceparent);
END;
$$;

-- set_task_priority: a task's priority, and its unfinished subtasks' (the claim orders by
-- theirs), through its id range in one statement; then a wake-up, so that executors claim from
-- the head of the claim order at once. No task: SQLSTATE P0002; an ended task: 55000 with the
-- task's status as the error's DETAIL; a priority outside -1000..1000: 22023. Returns how many
-- subtasks moved.
CREATE FUNCTION taskd.set_task_priority(task_id bigint, priority integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    task  record;
    moved integer;
BEGIN
    IF priority IS NULL OR priority NOT BETWEEN -1000 AND 1000 THEN
        RAISE EXCEPTION 'taskd: priority % is outside -1000..1000', coalesce(priority::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    SELECT t.status, t.queue, t.first_subtask_id, t.last_subtask_id INTO task
      FROM taskd.tasks t
     WHERE t.id = set_task_priority.task_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'taskd: no task %', coalesce(task_id::text, 'NULL')
            USING ERRCODE = 'P0002';
    END IF;
    IF task.status NOT IN ('pending', 'processing') THEN
        RAISE EXCEPTION 'taskd: task % has already ended (%); its priority cannot change',
            task_id, task.status USING ERRCODE = '55000', DETAIL = task.status;
    END IF;
    -- Subtasks before their task, in the order the counter trigger locks them: no deadlock.
    UPDATE taskd.subtasks s
       SET priority = set_task_priority.priority, updated_at = now()
     WHERE s.id BETWEEN task.first_subtask_id AND task.last_subtask_id
       AND s.task_id = set_task_priority.task_id
       AND s.status IN ('pending', 'processing')
       AND s.priority <> set_task_priority.priority;
    GET DIAGNOSTICS moved = ROW_COUNT;
    UPDATE taskd.tasks t
       SET priority = set_task_priority.priority, updated_at = now()
     WHERE t.id = set_task_priority.task_id;
    IF moved > 0 THEN
        PERFORM pg_notify('taskd', task.queue);
    END IF;
    RETURN moved;
END;
$$;
REVOKE ALL ON FUNCTION taskd.set_task_priority(bigint, integer) FROM PUBLIC;

-- task_subtasks: a task's subtasks in id order through its id range of the primary key (there
-- is no index on task_id: `WHERE task_id = $1` reads the whole table). Plain SQL, as the caller:
-- the planner inlines it, and the caller needs SELECT on tasks and subtasks.
CREATE FUNCTION taskd.task_subtasks(task_id bigint) RETURNS SETOF taskd.subtasks
LANGUAGE sql STABLE AS $$
    SELECT s.*
      FROM taskd.tasks t
      JOIN taskd.subtasks s
        ON s.id BETWEEN t.first_subtask_id AND t.last_subtask_id AND s.task_id = t.id
     WHERE t.id = task_subtasks.task_id
     ORDER BY s.id
$$;

INSERT INTO taskd.schema_migrations (version, name) VALUES (1, 'initial'), (2, 'lease_index'),
    (3, 'json_depth'), (4, 'count_without_join'), (5, 'cheap_name_checks'),
    (6, 'subtask_id_ranges'), (7, 'one_payload_submit'), (8, 'crash_counts'),
    (9, 'traceparent'), (10, 'rules_as_meant'), (16, 'vacuum_as_a_queue_needs');
