-- taskd schema, version 19: one rescuer pass per round across the fleet (issue 31).
--
-- Before, every daemon ran the rescuer's whole pass every rescue_interval: N daemons, N passes
-- an interval, each finding the same (usually empty) work. Now a daemon first takes the round:
-- one statement that moves next_at to now() + the interval where next_at <= now(), so exactly
-- one daemon a round does the pass. No leader and no lock held across a pass: a daemon that
-- took the round and then died or froze holds it only until next_at, then another takes the
-- next one (a leadership row with a database-clock TTL, one round long).

CREATE TABLE taskd.maintenance_rounds (
    name     text PRIMARY KEY CONSTRAINT maintenance_rounds_name_check
                 CHECK (name ~ '^[a-z][a-z0-9_]*$' AND length(name) <= 63),
    -- The next round may be taken from then on (database clock).
    next_at  timestamptz NOT NULL DEFAULT now(),
    -- Who took the last round and when: for operators.
    taken_by text,
    taken_at timestamptz,
    rounds   bigint NOT NULL DEFAULT 0
);

INSERT INTO taskd.maintenance_rounds (name) VALUES ('rescue');
