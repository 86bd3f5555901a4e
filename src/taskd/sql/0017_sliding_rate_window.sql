-- taskd schema, version 17: the rate limit counts a sliding window (issue 28, item 3).
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

-- rate_window_used: the starts of a window (claimed_at, claimed) after since.
CREATE FUNCTION taskd.rate_window_used(claimed_at timestamptz[], claimed integer[],
                                       since timestamptz) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(sum(e.n), 0)::integer
      FROM unnest(claimed_at, claimed) AS e(t, n)
     WHERE e.t > since
$$;

-- rate_window_add: the window (claimed_at, claimed) with `starts` more at claim_time: entries
-- of the period that ends at claim_time are kept, older ones dropped; entries of claim_time's
-- period-hundredth (aligned on the epoch) are merged into the new one, at the latest of their
-- times.
CREATE FUNCTION taskd.rate_window_add(claimed_at timestamptz[], claimed integer[],
                                      claim_time timestamptz, period integer,
                                      starts integer,
                                      OUT new_claimed_at timestamptz[],
                                      OUT new_claimed integer[])
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    WITH entries AS (
        SELECT e.t, e.n,
               date_bin(make_interval(secs => $4 / 100.0), e.t, timestamptz 'epoch')
               = date_bin(make_interval(secs => $4 / 100.0), $3, timestamptz 'epoch') AS merged
          FROM unnest($1, $2) AS e(t, n)
         WHERE e.t > $3 - make_interval(secs => $4)
    ), kept AS (
        SELECT t, n FROM entries WHERE NOT merged
        UNION ALL
        SELECT greatest($3, max(t)), $5 + coalesce(sum(n), 0)::integer
          FROM entries WHERE merged
    )
    SELECT coalesce(array_agg(t ORDER BY t), '{}'), coalesce(array_agg(n ORDER BY t), '{}')
      FROM kept
$$;
