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
    -- Some task waits for this one (taskd.task_dependencies): its end runs release_waiters.
    has_waiters     boolean NOT NULL DEFAULT false,
    -- Where to report the task's end (check_notify_target) and which ends; NULL: no target of
    -- its own (its queue's default applies, taskd.notify_routes).
    notify_url      text,
    notify_on       text[],
    CONSTRAINT tasks_counters_check CHECK (completed + failed + cancelled <= total),
    CONSTRAINT tasks_subtask_ids_check CHECK (first_subtask_id <= last_subtask_id)
);

CREATE UNIQUE INDEX tasks_idempotency_idx ON taskd.tasks (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_user_idx ON taskd.tasks (user_id, id DESC) WHERE user_id IS NOT NULL;
CREATE INDEX tasks_finished_idx ON taskd.tasks (completed_at) WHERE completed_at IS NOT NULL;
-- Tasks nobody started (status stays pending until the first subtask starts), by age, for the
-- pending timeout (0020).
CREATE INDEX tasks_unstarted_idx ON taskd.tasks (queue, created_at) WHERE status = 'pending';

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
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- Plain http notification targets on loopback and private addresses (check_notify_target).
    notify_allow_http_private boolean NOT NULL DEFAULT false
);
INSERT INTO taskd.limits DEFAULT VALUES;

CREATE TABLE taskd.notify_routes (
    -- A queue's name (its default target, for tasks without one of their own) or '*' (the
    -- operator's target, for every task in addition to its own).
    scope     text PRIMARY KEY,
    url       text NOT NULL,
    notify_on text[] NOT NULL CONSTRAINT notify_routes_notify_on_check
                  CHECK (cardinality(notify_on) > 0
                         AND notify_on <@ ARRAY['failed', 'completed', 'cancelled'])
);

CREATE TABLE taskd.notifications (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id          bigint NOT NULL,  -- no foreign key: tasks_delete_notifications cascades
    url              text NOT NULL,
    event            text NOT NULL CONSTRAINT notifications_event_check
                         CHECK (event IN ('failed', 'completed', 'cancelled')),
    status           text NOT NULL DEFAULT 'pending' CONSTRAINT notifications_status_check
                         CHECK (status IN ('pending', 'delivered', 'dead')),
    -- Deliveries tried; with locked_by, what fences the dispatcher's write of a result.
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- When it is due. A claim moves it to the end of the claim's lease: a dispatcher that dies
    -- mid-delivery leaves it due again then, for any other.
    run_after        timestamptz NOT NULL DEFAULT now(),
    locked_by        text,
    -- Retries stop (dead) once this is older than the dispatcher's retry_for; a redelivery
    -- asked by an operator starts it again.
    retry_since      timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    last_status_code integer,
    last_error       text
);

-- Due rows, for the dispatcher's claim; only undelivered ones, so it stays small.
CREATE INDEX notifications_due_idx ON taskd.notifications (run_after, id)
    WHERE status = 'pending';
CREATE INDEX notifications_task_idx ON taskd.notifications (task_id);
CREATE INDEX notifications_dead_idx ON taskd.notifications (id) WHERE status = 'dead';

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
-- a task that a statement ends is announced on taskd_task_end (its id as the payload), and gets
-- one outbox row in taskd.notifications per target that wants to hear of that end.
CREATE FUNCTION taskd.subtasks_count_outcomes() RETURNS trigger
LANGUAGE plpgsql
SET enable_seqscan = on  -- not the claim's and completion's off (see 0027)
AS $$
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

-- check_notify_target: raises 22023 naming the problem unless url is a target taskd may call
-- and notify_on names ends of a task. https anywhere; http only to loopback and private
-- addresses (localhost, 127/8, 10/8, 172.16/12, 192.168/16, ::1, fc00::/7), and only when
-- taskd.limits.notify_allow_http_private is on. No user:password@ in the URL.
CREATE FUNCTION taskd.check_notify_target(url text, notify_on text[]) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    parts text[];
    host  text;
    addr  inet;
BEGIN
    IF url IS NULL OR length(url) > 2000 THEN
        RAISE EXCEPTION 'taskd: notify_url must be a URL of at most 2000 characters'
            USING ERRCODE = '22023', COLUMN = 'notify_url';
    END IF;
    parts := regexp_match(url, '^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([/?#].*)?$');
    IF parts IS NULL OR url ~ '\s' THEN
        RAISE EXCEPTION 'taskd: notify_url % is not a URL', quote_literal(left(url, 100))
            USING ERRCODE = '22023', COLUMN = 'notify_url';
    END IF;
    IF lower(parts[1]) NOT IN ('http', 'https') THEN
        RAISE EXCEPTION 'taskd: notify_url % has scheme %; only https (or http to a private '
                        'address when allowed)', quote_literal(left(url, 100)), parts[1]
            USING ERRCODE = '22023', COLUMN = 'notify_url';
    END IF;
    IF position('@' IN parts[2]) > 0 THEN
        RAISE EXCEPTION 'taskd: notify_url % carries credentials; the signature authenticates '
                        'taskd to the receiver', quote_literal(left(url, 100))
            USING ERRCODE = '22023', COLUMN = 'notify_url';
    END IF;
    host := lower(substring(parts[2] FROM '^(\[[0-9A-Fa-f:.]+\]|[^:]+)(:[0-9]{1,5})?$'));
    IF host IS NULL OR host = '' THEN
        RAISE EXCEPTION 'taskd: notify_url % has no valid host', quote_literal(left(url, 100))
            USING ERRCODE = '22023', COLUMN = 'notify_url';
    END IF;
    IF lower(parts[1]) = 'http' THEN
        IF NOT coalesce((SELECT l.notify_allow_http_private FROM taskd.limits l), false) THEN
            RAISE EXCEPTION 'taskd: notify_url % is plain http; use https (http to private '
                            'addresses needs notifications.allow_http_private)',
                quote_literal(left(url, 100))
                USING ERRCODE = '22023', COLUMN = 'notify_url';
        END IF;
        host := trim(BOTH '[]' FROM host);
        IF host <> 'localhost' THEN
            IF host !~ '^[0-9.]+$' AND host !~ ':' THEN
                addr := NULL;
            ELSE
                BEGIN
                    addr := host::inet;
                EXCEPTION WHEN invalid_text_representation THEN
                    addr := NULL;
                END;
            END IF;
            IF addr IS NULL OR NOT (addr <<= '127.0.0.0/8' OR addr <<= '10.0.0.0/8'
                                    OR addr <<= '172.16.0.0/12' OR addr <<= '192.168.0.0/16'
                                    OR addr <<= '::1/128' OR addr <<= 'fc00::/7') THEN
                RAISE EXCEPTION 'taskd: notify_url % is plain http to %, not a loopback or '
                                'private address; use https', quote_literal(left(url, 100)), host
                    USING ERRCODE = '22023', COLUMN = 'notify_url';
            END IF;
        END IF;
    END IF;
    IF notify_on IS NULL OR cardinality(notify_on) = 0
       OR NOT notify_on <@ ARRAY['failed', 'completed', 'cancelled']
       OR array_position(notify_on, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'taskd: notify_on % must list one or more of failed, completed, cancelled',
            coalesce(quote_literal(notify_on::text), 'NULL')
            USING ERRCODE = '22023', COLUMN = 'notify_on';
    END IF;
END;
$$;

-- set_task_notify: a new task's notification target, checked (check_notify_target); nothing
-- to do without one. notify_on defaults to {failed}. Called by submit_task and
-- submit_task_for_user, as their owner.
CREATE FUNCTION taskd.set_task_notify(task_id bigint, notify_url text, notify_on text[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF notify_url IS NULL THEN
        IF notify_on IS NOT NULL THEN
            RAISE EXCEPTION 'taskd: notify_on needs a notify_url'
                USING ERRCODE = '22023', COLUMN = 'notify_on';
        END IF;
        RETURN;
    END IF;
    PERFORM taskd.check_notify_target(notify_url, coalesce(notify_on, ARRAY['failed']));
    UPDATE taskd.tasks t
       SET notify_url = set_task_notify.notify_url,
           notify_on = coalesce(set_task_notify.notify_on, ARRAY['failed'])
     WHERE t.id = set_task_notify.task_id
       -- only a task this transaction made: a unique key's duplicate returns an existing
       -- task, whose target stays as its submitter set it
       AND t.xmin = pg_current_xact_id()::xid;
END;
$$;
REVOKE ALL ON FUNCTION taskd.check_notify_target(text, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION taskd.set_task_notify(bigint, text, text[]) FROM PUBLIC;

-- A deleted task takes its notifications with it (retention, an operator's DELETE).
CREATE FUNCTION taskd.tasks_delete_notifications() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM taskd.notifications n USING old_tasks o WHERE n.task_id = o.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_delete_notifications
    AFTER DELETE ON taskd.tasks
    REFERENCING OLD TABLE AS old_tasks
    FOR EACH STATEMENT
    EXECUTE FUNCTION taskd.tasks_delete_notifications();

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

-- Unique submissions (item 4): a submission with a unique_key creates a task only when no task
-- holds the key; else it returns the task that does, and fails nothing. A key is held by its
-- task while the task is unfinished (scope 'unfinished', the default), for a period after the
-- submission (scope '1 hour', any interval), or forever. The owner is the task's user ('' for
-- SQL clients): one user's key never returns another's task.
CREATE TABLE taskd.unique_keys (
    owner      text NOT NULL,
    unique_key text NOT NULL CONSTRAINT unique_keys_unique_key_check
                   CHECK (length(unique_key) BETWEEN 1 AND 200),
    -- NULL only inside the transaction that creates the task.
    task_id    bigint,
    scope      text NOT NULL CONSTRAINT unique_keys_scope_check
                   CHECK (scope IN ('unfinished', 'period', 'forever')),
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, unique_key),
    CONSTRAINT unique_keys_period_check CHECK ((scope = 'period') = (expires_at IS NOT NULL))
);
-- The rescuer deletes keys that hold nothing any more, oldest first.
CREATE INDEX unique_keys_created_idx ON taskd.unique_keys (created_at) WHERE scope <> 'forever';

-- Dependencies (item 5): a task submitted with after => ARRAY[ids] waits for those tasks. Its
-- subtasks are inserted with run_after = 'infinity', which the claim never reaches, and are
-- released (run_after = the task's own, or now) by the end of its last dependency: the
-- trigger tasks_release_waiters on the task row whose status the counter trigger decides.
-- A dependency that fails (or is cancelled) fails (or cancels) its waiters, with the reason.
CREATE TABLE taskd.task_dependencies (
    task_id    bigint NOT NULL,   -- the waiting task
    depends_on bigint NOT NULL,   -- an unfinished task it waits for
    run_after  timestamptz,       -- the waiting task's own run_after (NULL: when released)
    PRIMARY KEY (task_id, depends_on)
);
CREATE INDEX task_dependencies_depends_on_idx ON taskd.task_dependencies (depends_on);

-- end_waiting_task: a waiting task's held subtasks fail (the dependency failed) or are
-- cancelled (it was cancelled), naming the dependency; the counter trigger ends the task.
CREATE FUNCTION taskd.end_waiting_task(task_id bigint, dependency bigint, dependency_status text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM taskd.task_dependencies d WHERE d.task_id = end_waiting_task.task_id;
    UPDATE taskd.subtasks s
       SET status = CASE WHEN dependency_status = 'cancelled' THEN 'cancelled' ELSE 'failed' END,
           error = format('dependency task %s %s', dependency, dependency_status),
           completed_at = now(), updated_at = now()
      FROM taskd.tasks t
     WHERE t.id = end_waiting_task.task_id
       AND s.id BETWEEN t.first_subtask_id AND t.last_subtask_id AND s.task_id = t.id
       AND s.status = 'pending' AND s.run_after = 'infinity';
END;
$$;
REVOKE ALL ON FUNCTION taskd.end_waiting_task(bigint, bigint, text) FROM PUBLIC;

-- insert_task_after: insert_task, waiting for the tasks in after. Unknown ids are refused
-- (22023, naming them; nothing written). Each dependency is locked in id order (as the counter
-- trigger locks tasks) and marked has_waiters, so that its end, now or later, sees this task.
-- A cycle cannot form: a task may wait only for tasks that exist before it.
CREATE FUNCTION taskd.insert_task_after(
    user_id      text,
    queue        text,
    kind         text,
    payloads     jsonb,
    name         text,
    priority     integer,
    params       jsonb,
    max_attempts integer,
    run_after    timestamptz,
    traceparent  text,
    after        bigint[]
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    wanted  bigint[];
    deps    record;
    missing text;
    new_id  bigint;
BEGIN
    IF after IS NULL OR cardinality(after) = 0 THEN
        RETURN taskd.insert_task(user_id, queue, kind, payloads, name, priority, params,
                                 max_attempts, run_after, traceparent);
    END IF;
    IF array_position(after, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'taskd: after holds a NULL task id' USING ERRCODE = '22023';
    END IF;
    SELECT array_agg(DISTINCT a ORDER BY a) INTO wanted FROM unnest(after) AS a;
    IF cardinality(wanted) > 1000 THEN
        RAISE EXCEPTION 'taskd: after names % tasks; at most 1000', cardinality(wanted)
            USING ERRCODE = '22023';
    END IF;
    WITH locked AS (
        SELECT t.id FROM taskd.tasks t WHERE t.id = ANY(wanted) ORDER BY t.id
           FOR NO KEY UPDATE
    ), marked AS (
        UPDATE taskd.tasks t SET has_waiters = true
          FROM locked l WHERE t.id = l.id
        RETURNING t.id, t.status
    )
    SELECT array_agg(m.id ORDER BY m.id) AS dep_ids,
           array_agg(m.id ORDER BY m.id) FILTER (WHERE m.status IN ('pending', 'processing'))
               AS open_ids,
           min(m.id) FILTER (WHERE m.status IN ('failed', 'cancelled')) AS ended_id
      INTO deps
      FROM marked m;
    IF coalesce(cardinality(deps.dep_ids), 0) < cardinality(wanted) THEN
        SELECT string_agg(w::text, ', ' ORDER BY w) INTO missing
          FROM unnest(wanted) AS w WHERE w <> ALL(coalesce(deps.dep_ids, '{}'));
        RAISE EXCEPTION 'taskd: after names unknown tasks: %', missing USING ERRCODE = '22023';
    END IF;
    IF deps.open_ids IS NULL AND deps.ended_id IS NULL THEN
        -- Every dependency has completed already.
        RETURN taskd.insert_task(user_id, queue, kind, payloads, name, priority, params,
                                 max_attempts, run_after, traceparent);
    END IF;
    new_id := taskd.insert_task(user_id, queue, kind, payloads, name, priority, params,
                                max_attempts, 'infinity', traceparent);
    IF deps.ended_id IS NOT NULL THEN
        -- A dependency has failed or was cancelled already: so does this task, at once.
        PERFORM taskd.end_waiting_task(new_id, deps.ended_id,
                                       (SELECT t.status FROM taskd.tasks t
                                         WHERE t.id = deps.ended_id));
        RETURN new_id;
    END IF;
    INSERT INTO taskd.task_dependencies (task_id, depends_on, run_after)
    SELECT new_id, d, insert_task_after.run_after FROM unnest(deps.open_ids) AS d;
    RETURN new_id;
END;
$$;
REVOKE ALL ON FUNCTION taskd.insert_task_after(text, text, text, jsonb, text, integer, jsonb,
                                               integer, timestamptz, text, bigint[]) FROM PUBLIC;

-- release_waiters: a task with waiters has ended. Completed: each waiter stops waiting for it,
-- and one that waits for nothing more is released. Failed or cancelled: its waiters end too.
-- Each waiter is locked first, so that the ends of two of its dependencies take turns and the
-- second sees the first's. As the schema's owner: whoever ends the task (an executor, the API)
-- needs no rights on task_dependencies.
CREATE FUNCTION taskd.release_waiters() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w      record;
    waiter record;
BEGIN
    FOR w IN SELECT d.task_id, d.run_after FROM taskd.task_dependencies d
              WHERE d.depends_on = NEW.id ORDER BY d.task_id LOOP
        SELECT t.queue, t.first_subtask_id, t.last_subtask_id INTO waiter
          FROM taskd.tasks t WHERE t.id = w.task_id FOR NO KEY UPDATE;
        IF NEW.status <> 'completed' THEN
            PERFORM taskd.end_waiting_task(w.task_id, NEW.id, NEW.status);
            CONTINUE;
        END IF;
        DELETE FROM taskd.task_dependencies d
         WHERE d.task_id = w.task_id AND d.depends_on = NEW.id;
        IF NOT EXISTS (SELECT 1 FROM taskd.task_dependencies d WHERE d.task_id = w.task_id) THEN
            UPDATE taskd.subtasks s
               SET run_after = greatest(coalesce(w.run_after, now()), now()), updated_at = now()
             WHERE s.id BETWEEN waiter.first_subtask_id AND waiter.last_subtask_id
               AND s.task_id = w.task_id AND s.status = 'pending'
               AND s.run_after = 'infinity';
            IF FOUND THEN
                PERFORM pg_notify('taskd', waiter.queue);
            END IF;
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_release_waiters
    AFTER UPDATE OF status ON taskd.tasks
    FOR EACH ROW
    WHEN (NEW.has_waiters AND NEW.status IN ('completed', 'failed', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION taskd.release_waiters();

-- submit_flow: what submit_task and submit_task_for_user do beyond insert_task: the unique key
-- and the dependencies (insert_task_after).
-- As insert_task, called only by them (as their owner); PUBLIC may not execute it. Sets
-- taskd.submit_existing ('on' when the key returned an existing task, else 'off') for the rest
-- of the transaction, for callers that want to know (the API takes no quota for a duplicate).
CREATE FUNCTION taskd.submit_flow(
    user_id      text,
    queue        text,
    kind         text,
    payloads     jsonb,
    name         text,
    priority     integer,
    params       jsonb,
    max_attempts integer,
    run_after    timestamptz,
    traceparent  text,
    unique_key   text,
    unique_scope text,
    after        bigint[]
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    owner_key  text := coalesce(submit_flow.user_id, '');
    key_scope  text;
    period     interval;
    held       record;
    new_id     bigint;
BEGIN
    IF unique_key IS NULL THEN
        IF unique_scope IS NOT NULL THEN
            RAISE EXCEPTION 'taskd: unique_scope needs a unique_key' USING ERRCODE = '22023';
        END IF;
        IF after IS NULL THEN
            RETURN taskd.insert_task(user_id, queue, kind, payloads, name, priority, params,
                                     max_attempts, run_after, traceparent);
        END IF;
        RETURN taskd.insert_task_after(user_id, queue, kind, payloads, name, priority, params,
                                       max_attempts, run_after, traceparent, after);
    END IF;
    IF length(unique_key) = 0 OR length(unique_key) > 200 THEN
        RAISE EXCEPTION 'taskd: unique_key is % characters; it must have 1 to 200',
            length(unique_key) USING ERRCODE = '22023';
    END IF;
    IF unique_scope IS NULL OR unique_scope = 'unfinished' THEN
        key_scope := 'unfinished';
    ELSIF unique_scope = 'forever' THEN
        key_scope := 'forever';
    ELSE
        BEGIN
            period := unique_scope::interval;
            -- A period so long that its end is past the last timestamp is refused too.
            PERFORM now() + period;
        EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow
                       OR interval_field_overflow OR syntax_error THEN
            period := NULL;
        END;
        IF period IS NULL OR period <= interval '0' THEN
            RAISE EXCEPTION 'taskd: unique_scope % is not unfinished, forever or a positive '
                'interval such as ''1 hour''', quote_literal(left(unique_scope, 100))
                USING ERRCODE = '22023';
        END IF;
        key_scope := 'period';
    END IF;
    LOOP
        -- Racing submitters of one key wait here for the first one's commit, then find it.
        INSERT INTO taskd.unique_keys AS k (owner, unique_key, scope, expires_at)
        VALUES (owner_key, submit_flow.unique_key, key_scope, now() + period)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            new_id := taskd.insert_task_after(user_id, queue, kind, payloads, name, priority,
                                              params, max_attempts, run_after, traceparent,
                                              after);
            UPDATE taskd.unique_keys k SET task_id = new_id
             WHERE k.owner = owner_key AND k.unique_key = submit_flow.unique_key;
            PERFORM set_config('taskd.submit_existing', 'off', true);
            RETURN new_id;
        END IF;
        SELECT k.task_id, k.scope, k.expires_at, t.id IS NOT NULL AS task_exists,
               t.completed_at, t.queue
          INTO held
          FROM taskd.unique_keys k
          LEFT JOIN taskd.tasks t ON t.id = k.task_id
         WHERE k.owner = owner_key AND k.unique_key = submit_flow.unique_key
           FOR UPDATE OF k;
        IF FOUND THEN
            IF held.scope = 'forever'
               OR (held.scope = 'period' AND held.expires_at > now())
               OR (held.scope = 'unfinished' AND held.task_exists
                   AND held.completed_at IS NULL) THEN
                PERFORM set_config('taskd.submit_existing', 'on', true);
                -- Counted for taskd_unique_duplicates_total: a row of its own, no lock that
                -- another submitter would wait for (version 17).
                IF held.queue IS NOT NULL THEN
                    INSERT INTO taskd.queue_counter_deltas (queue, counter)
                    VALUES (held.queue, 'unique_duplicates');
                END IF;
                RETURN held.task_id;
            END IF;
            -- The key is free again (its task ended, or its period passed): take it over.
            new_id := taskd.insert_task_after(user_id, queue, kind, payloads, name, priority,
                                              params, max_attempts, run_after, traceparent,
                                              after);
            UPDATE taskd.unique_keys k
               SET task_id = new_id, scope = key_scope,
                   expires_at = now() + period, created_at = now()
             WHERE k.owner = owner_key AND k.unique_key = submit_flow.unique_key;
            PERFORM set_config('taskd.submit_existing', 'off', true);
            RETURN new_id;
        END IF;
        -- Deleted between the two statements: try the insert again.
    END LOOP;
END;
$$;
REVOKE ALL ON FUNCTION taskd.submit_flow(text, text, text, jsonb, text, integer, jsonb, integer,
                                         timestamptz, text, text, text, bigint[]) FROM PUBLIC;

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
    traceparent  text DEFAULT NULL,
    unique_key   text DEFAULT NULL,
    unique_scope text DEFAULT NULL,
    after        bigint[] DEFAULT NULL,
    notify_url   text DEFAULT NULL,
    notify_on    text[] DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
BEGIN
    -- Without a unique key or dependencies, straight to insert_task (submit_flow would
    -- call it): the common submission, one call less. Without a target, no set_task_notify.
    IF submit_task_for_user.unique_key IS NULL AND submit_task_for_user.unique_scope IS NULL
       AND submit_task_for_user.after IS NULL THEN
        new_id := taskd.insert_task(submit_task_for_user.user_id, submit_task_for_user.queue,
                                    submit_task_for_user.kind, submit_task_for_user.payloads,
                                    submit_task_for_user.name, submit_task_for_user.priority,
                                    submit_task_for_user.params,
                                    submit_task_for_user.max_attempts,
                                    submit_task_for_user.run_after,
                                    submit_task_for_user.traceparent);
    ELSE
        new_id := taskd.submit_flow(submit_task_for_user.user_id, submit_task_for_user.queue,
                                    submit_task_for_user.kind, submit_task_for_user.payloads,
                                    submit_task_for_user.name, submit_task_for_user.priority,
                                    submit_task_for_user.params,
                                    submit_task_for_user.max_attempts,
                                    submit_task_for_user.run_after,
                                    submit_task_for_user.traceparent,
                                    submit_task_for_user.unique_key,
                                    submit_task_for_user.unique_scope,
                                    submit_task_for_user.after);
    END IF;
    IF submit_task_for_user.notify_url IS NOT NULL
       OR submit_task_for_user.notify_on IS NOT NULL THEN
        PERFORM taskd.set_task_notify(new_id, submit_task_for_user.notify_url,
                                      submit_task_for_user.notify_on);
    END IF;
    RETURN new_id;
END;
$$;
REVOKE ALL ON FUNCTION taskd.submit_task_for_user(text, text, text, jsonb, text, integer, jsonb,
                                                  integer, timestamptz, text, text, text, bigint[],
                                                  text, text[])
    FROM PUBLIC;

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
    traceparent  text DEFAULT NULL,
    unique_key   text DEFAULT NULL,
    unique_scope text DEFAULT NULL,
    after        bigint[] DEFAULT NULL,
    notify_url   text DEFAULT NULL,
    notify_on    text[] DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
BEGIN
    -- As submit_task_for_user: insert_task directly for the common submission.
    IF submit_task.unique_key IS NULL AND submit_task.unique_scope IS NULL
       AND submit_task.after IS NULL THEN
        new_id := taskd.insert_task(NULL, submit_task.queue, submit_task.kind,
                                    submit_task.payloads, submit_task.name, submit_task.priority,
                                    submit_task.params, submit_task.max_attempts,
                                    submit_task.run_after, submit_task.traceparent);
    ELSE
        new_id := taskd.submit_flow(NULL, submit_task.queue, submit_task.kind,
                                    submit_task.payloads, submit_task.name, submit_task.priority,
                                    submit_task.params, submit_task.max_attempts,
                                    submit_task.run_after, submit_task.traceparent,
                                    submit_task.unique_key, submit_task.unique_scope,
                                    submit_task.after);
    END IF;
    IF submit_task.notify_url IS NOT NULL OR submit_task.notify_on IS NOT NULL THEN
        PERFORM taskd.set_task_notify(new_id, submit_task.notify_url, submit_task.notify_on);
    END IF;
    RETURN new_id;
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

-- task_result_urls: the image URLs of a task's subtasks, one entry per subtask in id order
-- (NULL where a subtask has not completed or its result has no string image_url); NULL for a
-- task that does not exist; max_urls: only the first that many subtasks. Plain SQL, as the
-- caller; the id range in a LATERAL subquery, so that LIMIT stops the primary key's scan.
CREATE FUNCTION taskd.task_result_urls(task_id bigint, max_urls integer DEFAULT NULL)
RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT array_agg(CASE WHEN s.status = 'completed'
                               AND jsonb_typeof(s.result -> 'image_url') = 'string'
                          THEN s.result ->> 'image_url' END ORDER BY s.id)
      FROM taskd.tasks t
     CROSS JOIN LATERAL (
            SELECT s.id, s.status, s.result
              FROM taskd.subtasks s
             WHERE s.id BETWEEN t.first_subtask_id AND t.last_subtask_id AND s.task_id = t.id
             ORDER BY s.id
             LIMIT task_result_urls.max_urls) s
     WHERE t.id = task_result_urls.task_id
$$;

-- The operators' console (version 15).
CREATE TABLE taskd.console_audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor       text NOT NULL,
    action      text NOT NULL CONSTRAINT console_audit_action_check
                    CHECK (action IN ('retry_task', 'cancel_task', 'set_priority',
                                      'retry_failed', 'cancel_pending',
                                      'pause_queue', 'resume_queue')),
    target      jsonb NOT NULL DEFAULT '{}'::jsonb,
    row_count   integer NOT NULL DEFAULT 0 CONSTRAINT console_audit_row_count_check
                    CHECK (row_count >= 0),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE INDEX console_audit_started_idx ON taskd.console_audit (started_at DESC, id DESC);

CREATE INDEX subtasks_failed_idx ON taskd.subtasks (completed_at)
    WHERE status = 'failed';

CREATE INDEX tasks_priority_idx ON taskd.tasks (priority, id);

-- Queue controls (version 12), consulted inside the claim statement: a paused queue's claims
-- return nothing; a rate-limited queue's claims count their starts per window here.
CREATE TABLE taskd.queue_controls (
    queue             text PRIMARY KEY CONSTRAINT queue_controls_queue_check
                          CHECK (queue ~ '^[a-z][a-z0-9_-]*$' AND length(queue) <= 63),
    paused            boolean NOT NULL DEFAULT false,
    paused_at         timestamptz,
    paused_by         text,
    -- The pending timeout runs again from here: the time paused does not count.
    resumed_at        timestamptz,
    -- The rate limit the queue's claims last ran with: at most rate_limit starts in any
    -- stretch of rate_period seconds (a sliding window, version 17).
    rate_limit        integer CONSTRAINT queue_controls_rate_limit_check CHECK (rate_limit >= 1),
    rate_period       integer CONSTRAINT queue_controls_rate_period_check CHECK (rate_period >= 1),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- The recent claims that started subtasks, oldest first: rate_claimed[i] started at
    -- rate_claimed_at[i]. Entries older than the period are dropped by the next claim.
    rate_claimed_at   timestamptz[] NOT NULL DEFAULT '{}',
    rate_claimed      integer[] NOT NULL DEFAULT '{}',
    CONSTRAINT queue_controls_rate_claimed_check
        CHECK (cardinality(rate_claimed_at) = cardinality(rate_claimed))
);

-- pause_queue: stop every claim of the queue, on every executor, from this transaction's commit
-- on; running subtasks finish; submissions are still accepted. Idempotent. An unknown queue
-- (no row: no daemon ever served it and nobody paused it) is SQLSTATE P0002; paused_by longer
-- than 200 characters 22023. Returns true when it was running before.
CREATE FUNCTION taskd.pause_queue(queue text, paused_by text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was_paused boolean;
BEGIN
    IF length(paused_by) > 200 THEN
        RAISE EXCEPTION 'taskd: paused_by is longer than 200 characters' USING ERRCODE = '22023';
    END IF;
    SELECT c.paused INTO was_paused FROM taskd.queue_controls c
     WHERE c.queue = pause_queue.queue FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'taskd: unknown queue %: no daemon has served it', coalesce(
            quote_literal(left(queue, 100)), 'NULL') USING ERRCODE = 'P0002';
    END IF;
    IF NOT was_paused THEN
        UPDATE taskd.queue_controls c
           SET paused = true, paused_at = now(),
               paused_by = coalesce(pause_queue.paused_by, session_user::text), updated_at = now()
         WHERE c.queue = pause_queue.queue;
    END IF;
    RETURN NOT was_paused;
END;
$$;
REVOKE ALL ON FUNCTION taskd.pause_queue(text, text) FROM PUBLIC;

-- resume_queue: claims of the queue go on; its executors are woken at commit. Idempotent;
-- P0002 for an unknown queue. Returns true when it was paused before.
CREATE FUNCTION taskd.resume_queue(queue text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was_paused boolean;
BEGIN
    SELECT c.paused INTO was_paused FROM taskd.queue_controls c
     WHERE c.queue = resume_queue.queue FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'taskd: unknown queue %: no daemon has served it', coalesce(
            quote_literal(left(queue, 100)), 'NULL') USING ERRCODE = 'P0002';
    END IF;
    IF was_paused THEN
        UPDATE taskd.queue_controls c
           SET paused = false, paused_at = NULL, paused_by = NULL, resumed_at = now(),
               updated_at = now()
         WHERE c.queue = resume_queue.queue;
        PERFORM pg_notify('taskd', resume_queue.queue);
    END IF;
    RETURN was_paused;
END;
$$;
REVOKE ALL ON FUNCTION taskd.resume_queue(text) FROM PUBLIC;

-- A schedule: what to submit, and when (a cron expression in a time zone, parsed by the
-- daemons' tickers with croniter). Written by `taskd schedules`, the admin API and the
-- daemons' settings ([schedules.<name>], applied at start).
CREATE TABLE taskd.schedules (
    name         text PRIMARY KEY CONSTRAINT schedules_name_check
                     CHECK (name ~ '^[a-z][a-z0-9_.-]*$' AND length(name) <= 63),
    cron         text NOT NULL CONSTRAINT schedules_cron_check
                     CHECK (length(cron) BETWEEN 1 AND 200),
    timezone     text NOT NULL DEFAULT 'UTC' CONSTRAINT schedules_timezone_check
                     CHECK (length(timezone) BETWEEN 1 AND 100),
    queue        text NOT NULL CONSTRAINT schedules_queue_check
                     CHECK (queue ~ '^[a-z][a-z0-9_-]*$' AND length(queue) <= 63),
    kind         text NOT NULL CONSTRAINT schedules_kind_check
                     CHECK (kind ~ '^[A-Za-z0-9_.:-]+$' AND length(kind) <= 200),
    payloads     jsonb NOT NULL DEFAULT '[{}]'::jsonb CONSTRAINT schedules_payloads_check
                     CHECK (jsonb_typeof(payloads) = 'array' AND jsonb_array_length(payloads) >= 1),
    params       jsonb NOT NULL DEFAULT '{}'::jsonb CONSTRAINT schedules_params_check
                     CHECK (jsonb_typeof(params) = 'object'),
    priority     integer NOT NULL DEFAULT 0 CONSTRAINT schedules_priority_check
                     CHECK (priority BETWEEN -1000 AND 1000),
    max_attempts integer NOT NULL DEFAULT 4 CONSTRAINT schedules_max_attempts_check
                     CHECK (max_attempts BETWEEN 1 AND 1000),
    enabled      boolean NOT NULL DEFAULT true,
    -- Ticks missed while no daemon ran: skip them, or create the latest catch_up of them.
    missed       text NOT NULL DEFAULT 'skip' CONSTRAINT schedules_missed_check
                     CHECK (missed IN ('skip', 'catch_up')),
    catch_up     integer NOT NULL DEFAULT 1 CONSTRAINT schedules_catch_up_check
                     CHECK (catch_up BETWEEN 1 AND 1000),
    -- Where the definition came from: 'settings' (a daemon's [schedules.<name>]) or 'runtime'.
    source       text NOT NULL DEFAULT 'runtime' CONSTRAINT schedules_source_check
                     CHECK (source IN ('settings', 'runtime')),
    -- No tick at or before this is ever created: set when the schedule is created, resumed or
    -- its expression changes (the database clock).
    ticks_from   timestamptz NOT NULL DEFAULT now(),
    last_tick    timestamptz,
    last_task_id bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per tick that created a task: the primary key makes racing tickers create it once.
CREATE TABLE taskd.schedule_ticks (
    schedule   text NOT NULL REFERENCES taskd.schedules (name) ON DELETE CASCADE,
    tick       timestamptz NOT NULL,
    task_id    bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, tick)
);

-- schedule_tick: the task of one tick of a schedule, created once whoever calls and however
-- often; returns its id, or NULL when the tick was created before (by this or another daemon)
-- or the schedule is gone or paused. The tick row and the task commit together.
CREATE FUNCTION taskd.schedule_tick(schedule text, tick timestamptz) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s      taskd.schedules;
    new_id bigint;
BEGIN
    -- KEY SHARE on the schedule (the foreign key): a delete waits for this tick, or wins.
    INSERT INTO taskd.schedule_ticks (schedule, tick)
    SELECT sc.name, schedule_tick.tick
      FROM taskd.schedules sc
     WHERE sc.name = schedule_tick.schedule AND sc.enabled
       AND schedule_tick.tick > sc.ticks_from
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO s FROM taskd.schedules sc WHERE sc.name = schedule_tick.schedule;
    new_id := taskd.insert_task(
        NULL, s.queue, s.kind, s.payloads, s.name, s.priority,
        s.params || jsonb_build_object('schedule', s.name, 'tick', schedule_tick.tick),
        s.max_attempts, NULL, NULL);
    UPDATE taskd.schedule_ticks t SET task_id = new_id
     WHERE t.schedule = schedule_tick.schedule AND t.tick = schedule_tick.tick;
    UPDATE taskd.schedules sc
       SET last_tick = schedule_tick.tick, last_task_id = new_id
     WHERE sc.name = schedule_tick.schedule
       AND (sc.last_tick IS NULL OR sc.last_tick < schedule_tick.tick);
    RETURN new_id;
END;
$$;
REVOKE ALL ON FUNCTION taskd.schedule_tick(text, timestamptz) FROM PUBLIC;

-- The rate limit's sliding window (version 17): see queue_controls.rate_claimed_at.
-- rate_window_used: the starts of a window (claimed_at, claimed) after since. Both functions
-- are plpgsql, not SQL: a SQL function the planner cannot inline is planned again at every
-- claim, plpgsql keeps its plans for the session (docs/benchmarks.md).
CREATE FUNCTION taskd.rate_window_used(claimed_at timestamptz[], claimed integer[],
                                       since timestamptz) RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    used integer := 0;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(claimed_at), 0) LOOP
        IF claimed_at[i] > since THEN
            used := used + claimed[i];
        END IF;
    END LOOP;
    RETURN used;
END;
$$;

-- rate_window_add: the window (claimed_at, claimed) with `starts` more at claim_time: entries
-- of the period that ends at claim_time are kept, older ones dropped; entries of claim_time's
-- period-hundredth (aligned on the epoch) are merged into the new one, at the latest of their
-- times, which is appended last (a claim's time is never before the last one's).
CREATE FUNCTION taskd.rate_window_add(claimed_at timestamptz[], claimed integer[],
                                      claim_time timestamptz, period integer,
                                      starts integer,
                                      OUT new_claimed_at timestamptz[],
                                      OUT new_claimed integer[])
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    width    interval := make_interval(secs => period / 100.0);
    bin      timestamptz := date_bin(width, claim_time, timestamptz 'epoch');
    since    timestamptz := claim_time - make_interval(secs => period);
    merged   integer := starts;
    latest   timestamptz := claim_time;
BEGIN
    new_claimed_at := '{}';
    new_claimed := '{}';
    FOR i IN 1 .. coalesce(cardinality(claimed_at), 0) LOOP
        CONTINUE WHEN claimed_at[i] <= since;
        IF date_bin(width, claimed_at[i], timestamptz 'epoch') = bin THEN
            merged := merged + claimed[i];
            latest := greatest(latest, claimed_at[i]);
        ELSE
            new_claimed_at := new_claimed_at || claimed_at[i];
            new_claimed := new_claimed || claimed[i];
        END IF;
    END LOOP;
    new_claimed_at := new_claimed_at || latest;
    new_claimed := new_claimed || merged;
END;
$$;

-- Counters per queue of what happens in SQL (version 17), where no daemon sees it (issue 28:
-- every control visible in /metrics): duplicates that unique keys turned away (counter 'unique_duplicates').
-- The submission inserts a row of its own into queue_counter_deltas, in its transaction (a row
-- per event, not an update of a shared counter: no submitter waits for another's commit); the
-- daemons' statistics pass folds the deltas into queue_counters and exports the sum of both.
CREATE TABLE taskd.queue_counter_deltas (
    queue   text NOT NULL,
    counter text NOT NULL,
    n       integer NOT NULL DEFAULT 1
);

CREATE TABLE taskd.queue_counters (
    queue   text NOT NULL,
    counter text NOT NULL,
    value   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, counter)
);
-- Maintenance rounds (version 19): one rescuer pass per round across the fleet. A daemon takes
-- the round with one statement that moves next_at to now() + the interval where next_at <= now();
-- one that dies or freezes after taking it holds it only until next_at.
CREATE TABLE taskd.maintenance_rounds (
    name     text PRIMARY KEY CONSTRAINT maintenance_rounds_name_check
                 CHECK (name ~ '^[a-z][a-z0-9_]*$' AND length(name) <= 63),
    next_at  timestamptz NOT NULL DEFAULT now(),
    taken_by text,
    taken_at timestamptz,
    rounds   bigint NOT NULL DEFAULT 0
);
INSERT INTO taskd.maintenance_rounds (name) VALUES ('rescue');

-- The API's plain create in one call (version 21): quota, submission, mark, ledger and the
-- task as the API answers it; a row with id NULL says why the account cannot pay.
CREATE FUNCTION taskd.api_create_task(
    new_user_id      text,
    new_queue        text,
    new_kind         text,
    new_payloads     jsonb,
    new_name         text,
    new_priority     integer,
    new_params       jsonb,
    new_max_attempts integer,
    new_traceparent  text,
    new_notify_url   text,
    new_notify_on    text[],
    cost             integer,
    urls_limit       integer DEFAULT 1000
) RETURNS TABLE (
    quota_remaining integer,
    is_member       boolean,
    id              bigint,
    name            text,
    queue           text,
    kind            text,
    priority        integer,
    user_id         text,
    params          jsonb,
    status          text,
    total           integer,
    completed       integer,
    failed          integer,
    cancelled       integer,
    quota_cost      integer,
    created_at      timestamptz,
    updated_at      timestamptz,
    completed_at    timestamptz,
    batch_size      integer,
    processing      integer,
    results         jsonb,
    error           text,
    result_urls     text[]
)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    left_over     integer;
    was_member    boolean;
    new_id        bigint;
    first_payload jsonb := api_create_task.new_payloads -> 0;
BEGIN
    UPDATE taskd.accounts a
       SET quota_remaining = a.quota_remaining - api_create_task.cost, updated_at = now()
     WHERE a.user_id = api_create_task.new_user_id AND a.is_member
       AND a.quota_remaining >= api_create_task.cost
    RETURNING a.quota_remaining INTO left_over;
    IF NOT FOUND THEN
        SELECT a.is_member, a.quota_remaining INTO was_member, left_over
          FROM taskd.accounts a WHERE a.user_id = api_create_task.new_user_id;
        RETURN QUERY SELECT left_over, was_member, NULL::bigint, NULL::text, NULL::text,
                            NULL::text, NULL::integer, NULL::text, NULL::jsonb, NULL::text,
                            NULL::integer, NULL::integer, NULL::integer, NULL::integer,
                            NULL::integer, NULL::timestamptz, NULL::timestamptz,
                            NULL::timestamptz, NULL::integer, NULL::integer, NULL::jsonb,
                            NULL::text, NULL::text[];
        RETURN;
    END IF;
    new_id := taskd.submit_task_for_user(
        user_id => api_create_task.new_user_id, queue => api_create_task.new_queue,
        kind => api_create_task.new_kind, payloads => api_create_task.new_payloads,
        name => api_create_task.new_name, priority => api_create_task.new_priority,
        params => api_create_task.new_params, max_attempts => api_create_task.new_max_attempts,
        run_after => now(), traceparent => api_create_task.new_traceparent,
        notify_url => api_create_task.new_notify_url, notify_on => api_create_task.new_notify_on);
    INSERT INTO taskd.quota_ledger (user_id, task_id, delta, reason)
    VALUES (api_create_task.new_user_id, new_id, -api_create_task.cost, 'deduct');
    RETURN QUERY
    UPDATE taskd.tasks t SET quota_cost = api_create_task.cost
     WHERE t.id = new_id
    RETURNING left_over, true, t.id, t.name, t.queue, t.kind, t.priority, t.user_id, t.params,
              t.status, t.total, t.completed, t.failed, t.cancelled, t.quota_cost,
              t.created_at, t.updated_at, t.completed_at,
              CASE WHEN jsonb_typeof(first_payload -> 'batch_size') = 'number'
                        AND (first_payload ->> 'batch_size') ~ '^[0-9]{1,6}$'
                   THEN (first_payload ->> 'batch_size')::integer ELSE 1 END,
              0, '[]'::jsonb, NULL::text,
              array_fill(NULL::text, ARRAY[least(t.total, api_create_task.urls_limit)]);
END;
$$;
REVOKE ALL ON FUNCTION taskd.api_create_task(text, text, text, jsonb, text, integer, jsonb,
                                             integer, text, text, text[], integer, integer)
    FROM PUBLIC;

-- The executor's outcome batch (version 26): fenced on (id, locked_by, attempt, processing),
-- failures aggregated into error_logs in the same statement. One generic plan a session (the
-- daemon's sessions plan every other statement for its parameters): see 0026 for the numbers.
-- No sequential scan in that plan, made once: see 0026.
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

-- The executor's plain claim (version 27): one queue without a rate limit or a cluster_max,
-- the statement claim_subtasks's rows, order and lease in three branches that keep one
-- generic plan a session, without a sequential scan: see 0027 for the numbers.
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

INSERT INTO taskd.schema_migrations (version, name) VALUES (1, 'initial'), (2, 'lease_index'),
    (3, 'json_depth'), (4, 'count_without_join'), (5, 'cheap_name_checks'),
    (6, 'subtask_id_ranges'), (7, 'one_payload_submit'), (8, 'crash_counts'),
    (9, 'traceparent'), (10, 'rules_as_meant'), (11, 'result_urls'), (12, 'queue_controls'),
    (13, 'flow'), (14, 'task_notifications'), (15, 'console_audit'),
    (16, 'vacuum_as_a_queue_needs'), (17, 'sliding_window_and_counters'),
    (19, 'maintenance_rounds'), (20, 'unstarted_index'), (21, 'api_create_task'),
    (26, 'record_outcomes_planned_once'), (27, 'claim_planned_once'),
    (28, 'plain_submit_path');
