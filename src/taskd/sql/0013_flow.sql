-- taskd schema, version 13: job flow (issue 28, items 1, 4, 5).
--   - Schedules (cron): taskd.schedules holds each schedule; taskd.schedule_ticks one row per
--     tick that made a task, keyed (schedule, tick), so that the tickers of any number of
--     daemons create each tick's task once (taskd.schedule_tick, ON CONFLICT DO NOTHING).
--   - Unique submissions: taskd.unique_keys; submit_task(..., unique_key, unique_scope).
--   - Dependencies: submit_task(..., after => ARRAY[task ids]); the task's subtasks wait with
--     run_after = 'infinity' (the claim is unchanged) until every dependency has completed, and
--     fail (or are cancelled) with a reason naming the dependency that failed (or was).

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
ALTER TABLE taskd.tasks ADD COLUMN has_waiters boolean NOT NULL DEFAULT false;

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
               t.completed_at
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

-- submit_task and submit_task_for_user take unique_key, unique_scope and after as trailing arguments
-- with defaults (a call without them is unchanged); their grants carry over, PUBLIC's too.
CREATE TEMPORARY TABLE flow_submit_task_grants ON COMMIT DROP AS
SELECT a.grantee
  FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
 WHERE p.oid = 'taskd.submit_task(text, text, jsonb, text, integer, jsonb, integer, timestamptz, text)'::regprocedure
   AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner;
CREATE TEMPORARY TABLE flow_submit_for_user_grants ON COMMIT DROP AS
SELECT a.grantee
  FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
 WHERE p.oid = 'taskd.submit_task_for_user(text, text, text, jsonb, text, integer, jsonb, integer, timestamptz, text)'::regprocedure
   AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner;

DROP FUNCTION taskd.submit_task(text, text, jsonb, text, integer, jsonb, integer, timestamptz,
                                text);
DROP FUNCTION taskd.submit_task_for_user(text, text, text, jsonb, text, integer, jsonb, integer,
                                         timestamptz, text);

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
    after        bigint[] DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN taskd.submit_flow(submit_task_for_user.user_id, submit_task_for_user.queue,
                             submit_task_for_user.kind, submit_task_for_user.payloads,
                             submit_task_for_user.name, submit_task_for_user.priority,
                             submit_task_for_user.params, submit_task_for_user.max_attempts,
                             submit_task_for_user.run_after, submit_task_for_user.traceparent,
                             submit_task_for_user.unique_key, submit_task_for_user.unique_scope,
                             submit_task_for_user.after);
END;
$$;

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
    after        bigint[] DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN taskd.submit_flow(NULL, submit_task.queue, submit_task.kind, submit_task.payloads,
                             submit_task.name, submit_task.priority, submit_task.params,
                             submit_task.max_attempts, submit_task.run_after,
                             submit_task.traceparent, submit_task.unique_key,
                             submit_task.unique_scope, submit_task.after);
END;
$$;

DO $grants$
DECLARE
    role_oid oid;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM flow_submit_task_grants g WHERE g.grantee = 0) THEN
        REVOKE ALL ON FUNCTION taskd.submit_task(text, text, jsonb, text, integer, jsonb,
                                                 integer, timestamptz, text, text, text,
                                                 bigint[]) FROM PUBLIC;
    END IF;
    FOR role_oid IN SELECT g.grantee FROM flow_submit_task_grants g WHERE g.grantee <> 0 LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.submit_task(text, text, jsonb, text, '
                       'integer, jsonb, integer, timestamptz, text, text, text, bigint[]) TO %s',
                       role_oid::regrole);
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM flow_submit_for_user_grants g WHERE g.grantee = 0) THEN
        REVOKE ALL ON FUNCTION taskd.submit_task_for_user(text, text, text, jsonb, text, integer,
                                                          jsonb, integer, timestamptz, text,
                                                          text, text, bigint[]) FROM PUBLIC;
    END IF;
    FOR role_oid IN SELECT g.grantee FROM flow_submit_for_user_grants g WHERE g.grantee <> 0
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.submit_task_for_user(text, text, text, '
                       'jsonb, text, integer, jsonb, integer, timestamptz, text, text, text, '
                       'bigint[]) '
                       'TO %s', role_oid::regrole);
    END LOOP;
END
$grants$;
