-- taskd schema, version 12: queue controls, consulted inside the claim statement.
--
-- queue_controls holds one row per queue that a daemon has served or an operator has paused:
-- whether it is paused (every claim of it returns nothing until it is resumed) and the window
-- counter of its rate limit (the rate limit itself is a queue setting; the claim passes it in,
-- and records it here for `taskd status`). pause_queue / resume_queue are the door for SQL
-- clients and the API; both wake the queue's executors.

CREATE TABLE taskd.queue_controls (
    queue             text PRIMARY KEY CONSTRAINT queue_controls_queue_check
                          CHECK (queue ~ '^[a-z][a-z0-9_-]*$' AND length(queue) <= 63),
    paused            boolean NOT NULL DEFAULT false,
    paused_at         timestamptz,
    paused_by         text,
    -- The pending timeout runs again from here: the time paused does not count.
    resumed_at        timestamptz,
    -- The rate limit the queue's claims last ran with: at most rate_limit starts per window
    -- of rate_period seconds, windows aligned on the database clock's epoch.
    rate_limit        integer CONSTRAINT queue_controls_rate_limit_check CHECK (rate_limit >= 1),
    rate_period       integer CONSTRAINT queue_controls_rate_period_check CHECK (rate_period >= 1),
    -- Starts counted in the window that begins at rate_window_start.
    rate_window_start timestamptz,
    rate_window_count integer NOT NULL DEFAULT 0 CHECK (rate_window_count >= 0),
    updated_at        timestamptz NOT NULL DEFAULT now()
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
