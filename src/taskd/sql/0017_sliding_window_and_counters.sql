-- taskd schema, version 17: the rate limit counts a sliding window (issue 28, item 3), and
-- the counters of unique keys' duplicates per queue (issue 28: visible in /metrics).
--
-- Version 12 counted each rate-limited queue's starts in windows aligned on the epoch: two
-- windows meet, so up to 2 × N could start within one period that straddled a boundary. Now
-- the queue's row keeps its recent claims (when, how many started), and a claim at time t takes
-- at most N minus the starts counted in (t - period, t]: no period-long stretch of started_at,
-- wherever it begins, holds more than N. Claims of one period-hundredth (10 ms of a second) are
-- kept as one entry at the latest of their times, which can only over-count them: the queue's
-- row stays at most ~100 entries long, whatever the limit.

ALTER TABLE taskd.queue_controls
    DROP COLUMN rate_window_start,
    DROP COLUMN rate_window_count,
    -- The recent claims that started subtasks, oldest first: rate_claimed[i] started at
    -- rate_claimed_at[i]. Entries older than the period are dropped by the next claim.
    ADD COLUMN rate_claimed_at timestamptz[] NOT NULL DEFAULT '{}',
    ADD COLUMN rate_claimed    integer[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT queue_controls_rate_claimed_check
        CHECK (cardinality(rate_claimed_at) = cardinality(rate_claimed));

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

-- Counters per queue of what happens in SQL, where no daemon sees it (issue 28: every control
-- visible in /metrics): duplicates that unique keys turned away (counter 'unique_duplicates').
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

CREATE OR REPLACE FUNCTION taskd.submit_flow(
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

