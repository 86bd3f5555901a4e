-- taskd schema, version 16: storage parameters for tables that churn (issue 32).
--
-- Every claim and every completion leaves a dead row version in subtasks and a dead entry in
-- the claim index; PostgreSQL's stock autovacuum waits until 20 % of a table's live rows are
-- dead, and the live rows of subtasks are mostly finished history: the more history, the
-- rarer the vacuum, the longer the claim index and the slower the claim. So vacuum these two
-- tables after a fixed number of dead rows, whatever their size, and without the cost-based
-- throttle (they are vacuumed often, each pass is short). Measured with `python -m bench
-- soak` (docs/benchmarks.md, "Steady state"). Storage parameters only: no rewrite, no lock
-- beyond a brief SHARE UPDATE EXCLUSIVE.

ALTER TABLE taskd.subtasks SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 100000,
    autovacuum_vacuum_cost_delay = 0
);

-- tasks: one row per submit_task call, its counters updated by each completer batch.
ALTER TABLE taskd.tasks SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 100000,
    autovacuum_vacuum_cost_delay = 0
);
