-- taskd schema, version 2: the index on held leases no longer serves fenced writes.
-- subtasks_processing_idx (locked_by, lease_expires_at) WHERE status = 'processing' was the
-- planner's pick for every fenced write (locked_by = $executor AND status = 'processing'):
-- each write then visited every row version the executor had held since the last vacuum
-- (500 outcomes took 1.9 s after 20,000 claims). Its predicate is now lease_expires_at, which
-- is set exactly while a subtask is processing: the rescuer's lease_expires_at < now() uses
-- it, and fenced writes, which name no lease, find their rows by primary key.
DROP INDEX taskd.subtasks_processing_idx;
CREATE INDEX subtasks_lease_idx ON taskd.subtasks (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;
