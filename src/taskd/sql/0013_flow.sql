-- taskd schema, version 13: job flow (issue 28, items 1, 4, 5).
--   - Schedules (cron): taskd.schedules holds each schedule; taskd.schedule_ticks one row per
--     tick that made a task, keyed (schedule, tick), so that the tickers of any number of
--     daemons create each tick's task once (taskd.schedule_tick, ON CONFLICT DO NOTHING).

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
