-- taskd database roles with least privilege on schema taskd. NOT a migration: an operator runs
-- it (as the schema's owner or a superuser) after `taskd migrate`, and again after each upgrade
-- that adds tables; it is idempotent.
--
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -f roles.sql
--
-- It creates four NOLOGIN group roles; give each to a login role of your own:
--
--   CREATE ROLE taskd_host1 LOGIN PASSWORD '...' IN ROLE taskd_executor;   -- taskd run
--   CREATE ROLE taskd_web   LOGIN PASSWORD '...' IN ROLE taskd_api;        -- taskd api
--   CREATE ROLE ops_alice   LOGIN PASSWORD '...' IN ROLE taskd_readonly;   -- taskd status
--   CREATE ROLE billing     LOGIN PASSWORD '...' IN ROLE taskd_client;     -- SQL clients
--
-- Other names: set them in the same session first (roles are cluster-wide; the tests use names
-- of their own), e.g.
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -c "SET taskd.executor_role = 'q_exec'" \
--        -c "SET taskd.api_role = 'q_api'" -c "SET taskd.readonly_role = 'q_ro'" \
--        -c "SET taskd.client_role = 'q_client'" -f roles.sql
--
--   taskd_executor  claims, completes, heartbeats, rescues, deletes old finished rows,
--                   writes its settings' schedules and creates their ticks (schedule_tick),
--                   aggregates errors; on a failed API task the refund trigger (which runs with
--                   the executor's rights) returns the quota: INSERT into quota_ledger and
--                   UPDATE of two columns of accounts. No INSERT into tasks or accounts.
--                   The task-end outbox (notifications): written when a task ends, then
--                   delivered by the dispatcher.
--   taskd_api       creates tasks (with submit_task), reads them, cancels and retries; schedules
--                   (the admin routes); accounts
--                   and the quota ledger; reads executors for /v1/status. Deletes nothing and
--                   never writes executors or error_logs. Writes console_audit (the
--                   console's record of its actions).
--                   Only it may set a task's user: EXECUTE on taskd.submit_task_for_user
--                   and on taskd.api_create_task (POST /v1/tasks in one call).
--                   Pauses and resumes queues (the admin endpoints /v1/queues).
--   taskd_readonly  SELECT on every taskd table (taskd status, taskd tasks list/show, Grafana).
--   taskd_client    a service that uses taskd through SQL (docs/sql.md): submit_task,
--                   set_task_priority, task_subtasks, task_result_urls, pause_queue and
--                   resume_queue; SELECT on tasks, subtasks, limits, queue_controls and
--                   notifications (the delivery state of task-end webhooks).
--                   Nothing else: no user ids, no limit of its own, no direct writes.
--
-- None may CREATE in schema taskd (only its owner migrates), and EXECUTE on submit_task is taken
-- from PUBLIC. The functions run as the schema's owner (SECURITY DEFINER): EXECUTE is all a
-- role needs to submit. Re-run this script after `taskd migrate` to version 8, which replaced
-- submit_task and added functions.

DO $roles$
DECLARE
    executor_role text := coalesce(nullif(current_setting('taskd.executor_role', true), ''),
                                   'taskd_executor');
    api_role      text := coalesce(nullif(current_setting('taskd.api_role', true), ''),
                                   'taskd_api');
    readonly_role text := coalesce(nullif(current_setting('taskd.readonly_role', true), ''),
                                   'taskd_readonly');
    client_role   text := coalesce(nullif(current_setting('taskd.client_role', true), ''),
                                   'taskd_client');
    r             text;
BEGIN
    FOREACH r IN ARRAY ARRAY[executor_role, api_role, readonly_role, client_role] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
        -- Start from nothing, so that a re-run also takes back what an older script gave.
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA taskd FROM %I', r);
        EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA taskd FROM %I', r);
        EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA taskd FROM %I', r);
        EXECUTE format('REVOKE ALL ON SCHEMA taskd FROM %I', r);
        EXECUTE format('GRANT USAGE ON SCHEMA taskd TO %I', r);
        -- The startup check reads the schema version.
        EXECUTE format('GRANT SELECT ON taskd.schema_migrations TO %I', r);
    END LOOP;

    REVOKE ALL ON FUNCTION taskd.submit_task(text, text, jsonb, text, integer, jsonb, integer,
                                             timestamptz, text, text, text, bigint[], text,
                                             text[]) FROM PUBLIC;
    -- The migration revokes these already; said again in case someone granted them.
    REVOKE ALL ON FUNCTION taskd.submit_task_for_user(text, text, text, jsonb, text, integer,
                                                      jsonb, integer, timestamptz, text, text,
                                                      text, bigint[], text, text[]) FROM PUBLIC;
    REVOKE ALL ON FUNCTION taskd.api_create_task(text, text, text, jsonb, text, integer, jsonb,
                                                 integer, text, text, text[], integer, integer)
        FROM PUBLIC;
    REVOKE ALL ON FUNCTION taskd.set_task_priority(bigint, integer) FROM PUBLIC;
    REVOKE ALL ON FUNCTION taskd.pause_queue(text, text) FROM PUBLIC;
    REVOKE ALL ON FUNCTION taskd.resume_queue(text) FROM PUBLIC;
    REVOKE ALL ON FUNCTION taskd.schedule_tick(text, timestamptz) FROM PUBLIC;

    -- taskd run
    EXECUTE format('GRANT SELECT, UPDATE, DELETE ON taskd.tasks, taskd.subtasks TO %I',
                   executor_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON taskd.executors, taskd.error_logs TO %I',
                   executor_role);
    EXECUTE format('GRANT SELECT, INSERT ON taskd.quota_ledger TO %I', executor_role);
    EXECUTE format('GRANT SELECT (user_id, quota_remaining), '
                   'UPDATE (quota_remaining, updated_at) ON taskd.accounts TO %I',
                   executor_role);
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA taskd TO %I', executor_role);
    -- The claim reads the paused flag and counts its starts in the rate limit's window; a
    -- daemon records the queues it serves.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON taskd.queue_controls TO %I', executor_role);
    -- The outbox: the counter trigger inserts a task end's notifications (it runs with the
    -- rights of whoever ends the task); the dispatcher claims and records deliveries.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON taskd.notifications TO %I', executor_role);
    EXECUTE format('GRANT SELECT ON taskd.notify_routes TO %I', executor_role);
    -- Schedules: the settings' [schedules.<name>] are written at start; ticks are created
    -- through schedule_tick and pruned after the retention.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON taskd.schedules TO %I', executor_role);
    EXECUTE format('GRANT SELECT, DELETE ON taskd.schedule_ticks TO %I', executor_role);
    -- Retention deletes unique keys that hold nothing any more.
    EXECUTE format('GRANT SELECT, UPDATE, DELETE ON taskd.unique_keys TO %I', executor_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.schedule_tick(text, timestamptz) TO %I',
                   executor_role);
    -- The statistics pass: tasks waiting on dependencies, and the per-queue counters of what
    -- happens in SQL (the deltas a submission inserts, folded into queue_counters).
    EXECUTE format('GRANT SELECT ON taskd.task_dependencies TO %I', executor_role);
    -- (UPDATE: the fold locks the deltas it takes, FOR UPDATE SKIP LOCKED)
    EXECUTE format('GRANT SELECT, UPDATE, DELETE ON taskd.queue_counter_deltas TO %I',
                   executor_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON taskd.queue_counters TO %I', executor_role);
    -- The rescuer takes the fleet's maintenance round (the row is put back if it was deleted).
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON taskd.maintenance_rounds TO %I',
                   executor_role);

    -- taskd api
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON taskd.tasks, taskd.subtasks, '
                   'taskd.accounts TO %I', api_role);
    EXECUTE format('GRANT SELECT, INSERT ON taskd.quota_ledger TO %I', api_role);
    EXECUTE format('GRANT SELECT ON taskd.executors, taskd.error_logs TO %I', api_role);
    -- The console (served by taskd api) records its actions.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON taskd.console_audit TO %I', api_role);
    -- A cancel may end a task (outbox rows); admins list and redeliver notifications.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON taskd.notifications TO %I', api_role);
    EXECUTE format('GRANT SELECT ON taskd.notify_routes TO %I', api_role);
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA taskd TO %I', api_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.submit_task(text, text, jsonb, text, '
                   'integer, jsonb, integer, timestamptz, text, text, text, bigint[], text, '
                   'text[]) TO %I', api_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.submit_task_for_user(text, text, text, '
                   'jsonb, text, integer, jsonb, integer, timestamptz, text, text, text, bigint[], '
                   'text, text[]) TO %I',
                   api_role);
    -- POST /v1/tasks in one call (version 21): runs with the caller's rights.
    EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.api_create_task(text, text, text, jsonb, '
                   'text, integer, jsonb, integer, text, text, text[], integer, integer) TO %I',
                   api_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.set_task_priority(bigint, integer) TO %I',
                   api_role);
    -- The admin endpoints /v1/queues: pause and resume; a configured queue no daemon has
    -- served yet gets its row first.
    EXECUTE format('GRANT SELECT, INSERT (queue) ON taskd.queue_controls TO %I', api_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.pause_queue(text, text), '
                   'taskd.resume_queue(text) TO %I', api_role);
    -- The admin routes manage schedules (run-now submits through submit_task).
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON taskd.schedules TO %I', api_role);
    EXECUTE format('GRANT SELECT ON taskd.schedule_ticks TO %I', api_role);
    -- /v1/status: tasks waiting on dependencies, unique keys' duplicates.
    EXECUTE format('GRANT SELECT ON taskd.task_dependencies, taskd.queue_counters, '
                   'taskd.queue_counter_deltas TO %I', api_role);

    -- taskd status
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA taskd TO %I', readonly_role);

    -- SQL clients: what docs/sql.md documents, and nothing more.
    EXECUTE format('GRANT SELECT ON taskd.tasks, taskd.subtasks, taskd.limits, '
                   'taskd.notifications TO %I', client_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.submit_task(text, text, jsonb, text, '
                   'integer, jsonb, integer, timestamptz, text, text, text, bigint[], text, '
                   'text[]) TO %I', client_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.set_task_priority(bigint, integer) TO %I',
                   client_role);
    EXECUTE format('GRANT SELECT ON taskd.queue_controls TO %I', client_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.pause_queue(text, text), '
                   'taskd.resume_queue(text) TO %I', client_role);
END
$roles$;
