-- taskd schema, version 14: task-end notifications through a transactional outbox (issue 27).
--   - A task may carry a notification target: tasks.notify_url and tasks.notify_on (the ends
--     to report: failed, completed, cancelled). submit_task and submit_task_for_user take them
--     as two trailing arguments; taskd.set_task_notify checks and stores them.
--   - taskd.notify_routes: a queue's default target (scope = the queue) and the operator's
--     target for every task (scope = '*'), written by `taskd migrate` from the settings.
--   - taskd.limits.notify_allow_http_private: plain http only to loopback and private
--     addresses, and only when this is on (`taskd migrate` writes it from the settings).
--   - taskd.notifications, the outbox: one row per target per task end, inserted by the
--     counter trigger in the statement that ends the task; the dispatcher delivers it.
--   - A deleted task takes its notifications with it; retention keeps a task (and its
--     subtasks) while a notification of it is still undelivered.

ALTER TABLE taskd.tasks
    ADD COLUMN notify_url text,
    ADD COLUMN notify_on text[];

ALTER TABLE taskd.limits
    ADD COLUMN notify_allow_http_private boolean NOT NULL DEFAULT false;

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

-- submit_task and submit_task_for_user take the target as two trailing arguments, after
-- version 13's unique key and dependencies (taskd.submit_flow makes or finds the task); their
-- EXECUTE grants (PUBLIC's too, or its absence) carry over to the new signatures.
CREATE TEMPORARY TABLE hooks_submit_task_grants ON COMMIT DROP AS
SELECT a.grantee
  FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
 WHERE p.oid = 'taskd.submit_task(text, text, jsonb, text, integer, jsonb, integer, timestamptz, text, text, text, bigint[])'::regprocedure
   AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner;
CREATE TEMPORARY TABLE hooks_submit_for_user_grants ON COMMIT DROP AS
SELECT a.grantee
  FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
 WHERE p.oid = 'taskd.submit_task_for_user(text, text, text, jsonb, text, integer, jsonb, integer, timestamptz, text, text, text, bigint[])'::regprocedure
   AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner;

DROP FUNCTION taskd.submit_task(text, text, jsonb, text, integer, jsonb, integer, timestamptz,
                                text, text, text, bigint[]);
DROP FUNCTION taskd.submit_task_for_user(text, text, text, jsonb, text, integer, jsonb, integer,
                                         timestamptz, text, text, text, bigint[]);

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
    new_id := taskd.submit_flow(submit_task_for_user.user_id, submit_task_for_user.queue,
                                submit_task_for_user.kind, submit_task_for_user.payloads,
                                submit_task_for_user.name, submit_task_for_user.priority,
                                submit_task_for_user.params, submit_task_for_user.max_attempts,
                                submit_task_for_user.run_after, submit_task_for_user.traceparent,
                                submit_task_for_user.unique_key, submit_task_for_user.unique_scope,
                                submit_task_for_user.after);
    PERFORM taskd.set_task_notify(new_id, submit_task_for_user.notify_url,
                                  submit_task_for_user.notify_on);
    RETURN new_id;
END;
$$;

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
    new_id := taskd.submit_flow(NULL, submit_task.queue, submit_task.kind, submit_task.payloads,
                                submit_task.name, submit_task.priority, submit_task.params,
                                submit_task.max_attempts, submit_task.run_after,
                                submit_task.traceparent, submit_task.unique_key,
                                submit_task.unique_scope, submit_task.after);
    PERFORM taskd.set_task_notify(new_id, submit_task.notify_url, submit_task.notify_on);
    RETURN new_id;
END;
$$;

DO $grants$
DECLARE
    role_oid oid;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM hooks_submit_task_grants g WHERE g.grantee = 0) THEN
        REVOKE ALL ON FUNCTION taskd.submit_task(text, text, jsonb, text, integer, jsonb,
                                                 integer, timestamptz, text, text, text, bigint[], text, text[])
            FROM PUBLIC;
    END IF;
    FOR role_oid IN SELECT g.grantee FROM hooks_submit_task_grants g WHERE g.grantee <> 0 LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.submit_task(text, text, jsonb, text, '
                       'integer, jsonb, integer, timestamptz, text, text, text, bigint[], text, text[]) TO %s',
                       role_oid::regrole);
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM hooks_submit_for_user_grants g WHERE g.grantee = 0) THEN
        REVOKE ALL ON FUNCTION taskd.submit_task_for_user(text, text, text, jsonb, text, integer,
                                                          jsonb, integer, timestamptz, text,
                                                          text, text, bigint[], text, text[])
            FROM PUBLIC;
    END IF;
    FOR role_oid IN SELECT g.grantee FROM hooks_submit_for_user_grants g WHERE g.grantee <> 0 LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.submit_task_for_user(text, text, text, '
                       'jsonb, text, integer, jsonb, integer, timestamptz, text, text, text, bigint[], text, text[]) '
                       'TO %s', role_oid::regrole);
    END LOOP;
END
$grants$;

-- Task counters and status follow their subtasks in every path (claim, completion, rescue,
-- timeout, cancel, retry, an operator's UPDATE), with at most one UPDATE per task per statement;
-- a task that a statement ends is announced on taskd_task_end (its id as the payload), and gets
-- one outbox row in taskd.notifications per target that wants to hear of that end.
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
