-- taskd schema, version 15: the operators' console (taskd api, /console).
--
-- console_audit records every action taken in the console: who (the token's subject), what
-- (the action and its target: a task id, or the filter of a bulk action), when (database
-- time), and how many rows it touched. A bulk action is one row, written when it starts and
-- brought up to date after each batch; finished_at stays NULL if it was cut short.
-- subtasks_failed_idx finds the failed subtasks of an error, newest first, without reading the
-- finished ones that succeeded; tasks_priority_idx pages the task list by priority.

CREATE TABLE taskd.console_audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor       text NOT NULL,
    action      text NOT NULL CONSTRAINT console_audit_action_check
                    CHECK (action IN ('retry_task', 'cancel_task', 'set_priority',
                                      'retry_failed', 'cancel_pending',
                                      'pause_queue', 'resume_queue')),
    target      jsonb NOT NULL DEFAULT '{}'::jsonb,
    row_count   integer NOT NULL DEFAULT 0 CONSTRAINT console_audit_row_count_check
                    CHECK (row_count >= 0),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE INDEX console_audit_started_idx ON taskd.console_audit (started_at DESC, id DESC);

CREATE INDEX subtasks_failed_idx ON taskd.subtasks (completed_at)
    WHERE status = 'failed';

CREATE INDEX tasks_priority_idx ON taskd.tasks (priority, id);
