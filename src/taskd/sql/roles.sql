-- taskd database roles with least privilege on schema taskd. NOT a migration: an operator runs
-- it (as the schema's owner or a superuser) after `taskd migrate`, and again after each upgrade
-- that adds tables; it is idempotent.
--
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -f roles.sql
--
-- It creates three NOLOGIN group roles; give each to a login role of your own:
--
--   CREATE ROLE taskd_host1 LOGIN PASSWORD '...' IN ROLE taskd_executor;   -- taskd run
--   CREATE ROLE taskd_web   LOGIN PASSWORD '...' IN ROLE taskd_api;        -- taskd api
--   CREATE ROLE ops_alice   LOGIN PASSWORD '...' IN ROLE taskd_readonly;   -- taskd status
--
-- Other names: set them in the same session first (roles are cluster-wide; the tests use names
-- of their own), e.g.
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -c "SET taskd.executor_role = 'q_exec'" \
--        -c "SET taskd.api_role = 'q_api'" -c "SET taskd.readonly_role = 'q_ro'" -f roles.sql
--
--   taskd_executor  claims, completes, heartbeats, rescues, deletes old finished rows,
--                   aggregates errors; on a failed API task the refund trigger (which runs with
--                   the executor's rights) returns the quota: INSERT into quota_ledger and
--                   UPDATE of two columns of accounts. No INSERT into tasks or accounts.
--   taskd_api       creates tasks (with submit_task), reads them, cancels and retries; accounts
--                   and the quota ledger; reads executors for /v1/status. Deletes nothing and
--                   never writes executors or error_logs.
--   taskd_readonly  SELECT on every taskd table (taskd status, taskd tasks list/show, Grafana).
--
-- None may CREATE in schema taskd (only its owner migrates), and EXECUTE on submit_task is taken
-- from PUBLIC: a service that submits through SQL gets taskd_api, or a role granted USAGE on
-- schema taskd and EXECUTE on taskd.submit_task (it runs as the schema's owner).

DO $roles$
DECLARE
    executor_role text := coalesce(nullif(current_setting('taskd.executor_role', true), ''),
                                   'taskd_executor');
    api_role      text := coalesce(nullif(current_setting('taskd.api_role', true), ''),
                                   'taskd_api');
    readonly_role text := coalesce(nullif(current_setting('taskd.readonly_role', true), ''),
                                   'taskd_readonly');
    r             text;
BEGIN
    FOREACH r IN ARRAY ARRAY[executor_role, api_role, readonly_role] LOOP
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

    REVOKE ALL ON FUNCTION taskd.submit_task(text, text, jsonb, text, integer, jsonb, text,
                                             integer, timestamptz, integer, text) FROM PUBLIC;

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

    -- taskd api
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON taskd.tasks, taskd.subtasks, '
                   'taskd.accounts TO %I', api_role);
    EXECUTE format('GRANT SELECT, INSERT ON taskd.quota_ledger TO %I', api_role);
    EXECUTE format('GRANT SELECT ON taskd.executors, taskd.error_logs TO %I', api_role);
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA taskd TO %I', api_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.submit_task(text, text, jsonb, text, '
                   'integer, jsonb, text, integer, timestamptz, integer, text) TO %I', api_role);

    -- taskd status
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA taskd TO %I', readonly_role);
END
$roles$;
