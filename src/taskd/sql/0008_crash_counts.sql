-- taskd schema, version 8: maintenance that needs no lock and no leader.
--
-- subtasks.crashes counts the times a subtask's lease expired under it: its executor crashed,
-- froze or lost the database while running it. A crash is not evidence against each subtask
-- the executor ran, so the rescuer gives the attempt back and counts the crash instead. A
-- subtask in `poison_after - 1` crashes is a suspect: it runs alone on an executor that runs
-- nothing else, so that a crash while it runs is its own; one in `poison_after` crashes is
-- failed as a poison pill.
-- tasks_unfinished_idx finds the tasks that the pending timeout may fail (nobody started
-- them) without reading finished ones.

ALTER TABLE taskd.subtasks ADD COLUMN crashes integer NOT NULL DEFAULT 0;

CREATE INDEX tasks_unfinished_idx ON taskd.tasks (queue, created_at) WHERE completed_at IS NULL;

-- The subtasks that were running when an executor crashed or froze (suspects, at enough
-- crashes, run alone: claim_suspect). Small: only rows with a crash.
CREATE INDEX subtasks_suspect_idx ON taskd.subtasks (queue, priority DESC, run_after, id)
    WHERE status = 'pending' AND crashes > 0;
