-- taskd schema, version 21: the API's plain create in one call (issue 32, item 5).
--
-- POST /v1/tasks without an Idempotency-Key, a unique key or dependencies took four round trips
-- on one connection: BEGIN, the quota and the submission (api_create_task), the read back that
-- marked the task as the API's, COMMIT. taskd.api_create_task does all of it in one function
-- call, which an autocommit connection runs as its own transaction: one round trip.
--
-- It takes `cost` units of the user's quota under the account's row lock (an UPDATE that
-- re-checks the quota after a wait, so it is never oversold), submits the task through
-- submit_task_for_user (its checks, its errors), marks the task's quota_cost, records the
-- deduction in the ledger, and returns the task as the API answers it. When the account cannot
-- pay, nothing is written and the row says why: id NULL, and quota_remaining NULL (no such
-- account), or is_member false (not a member), or the quota that is left (too little).
--
-- The task as it stands at the end of the call: its row as the UPDATE that marks it returns it;
-- what taskd.api_task_detail's query reads from the subtasks is known without reading them, as
-- no other transaction can have touched subtasks that are not yet committed: none processing,
-- no results, no error, batch_size from the first payload (the same rule as the read), and
-- the result URLs NULL for each of the first urls_limit subtasks (none is completed).
--
-- SECURITY INVOKER: it does only what its caller may do already (roles.sql grants the API role
-- EXECUTE on it and on submit_task_for_user); PUBLIC may not execute it.

CREATE FUNCTION taskd.api_create_task(
    new_user_id      text,
    new_queue        text,
    new_kind         text,
    new_payloads     jsonb,
    new_name         text,
    new_priority     integer,
    new_params       jsonb,
    new_max_attempts integer,
    new_traceparent  text,
    new_notify_url   text,
    new_notify_on    text[],
    cost             integer,
    urls_limit       integer DEFAULT 1000
) RETURNS TABLE (
    quota_remaining integer,
    is_member       boolean,
    id              bigint,
    name            text,
    queue           text,
    kind            text,
    priority        integer,
    user_id         text,
    params          jsonb,
    status          text,
    total           integer,
    completed       integer,
    failed          integer,
    cancelled       integer,
    quota_cost      integer,
    created_at      timestamptz,
    updated_at      timestamptz,
    completed_at    timestamptz,
    batch_size      integer,
    processing      integer,
    results         jsonb,
    error           text,
    result_urls     text[]
)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    left_over     integer;
    was_member    boolean;
    new_id        bigint;
    first_payload jsonb := api_create_task.new_payloads -> 0;
BEGIN
    UPDATE taskd.accounts a
       SET quota_remaining = a.quota_remaining - api_create_task.cost, updated_at = now()
     WHERE a.user_id = api_create_task.new_user_id AND a.is_member
       AND a.quota_remaining >= api_create_task.cost
    RETURNING a.quota_remaining INTO left_over;
    IF NOT FOUND THEN
        SELECT a.is_member, a.quota_remaining INTO was_member, left_over
          FROM taskd.accounts a WHERE a.user_id = api_create_task.new_user_id;
        RETURN QUERY SELECT left_over, was_member, NULL::bigint, NULL::text, NULL::text,
                            NULL::text, NULL::integer, NULL::text, NULL::jsonb, NULL::text,
                            NULL::integer, NULL::integer, NULL::integer, NULL::integer,
                            NULL::integer, NULL::timestamptz, NULL::timestamptz,
                            NULL::timestamptz, NULL::integer, NULL::integer, NULL::jsonb,
                            NULL::text, NULL::text[];
        RETURN;
    END IF;
    new_id := taskd.submit_task_for_user(
        user_id => api_create_task.new_user_id, queue => api_create_task.new_queue,
        kind => api_create_task.new_kind, payloads => api_create_task.new_payloads,
        name => api_create_task.new_name, priority => api_create_task.new_priority,
        params => api_create_task.new_params, max_attempts => api_create_task.new_max_attempts,
        run_after => now(), traceparent => api_create_task.new_traceparent,
        notify_url => api_create_task.new_notify_url, notify_on => api_create_task.new_notify_on);
    INSERT INTO taskd.quota_ledger (user_id, task_id, delta, reason)
    VALUES (api_create_task.new_user_id, new_id, -api_create_task.cost, 'deduct');
    RETURN QUERY
    UPDATE taskd.tasks t SET quota_cost = api_create_task.cost
     WHERE t.id = new_id
    RETURNING left_over, true, t.id, t.name, t.queue, t.kind, t.priority, t.user_id, t.params,
              t.status, t.total, t.completed, t.failed, t.cancelled, t.quota_cost,
              t.created_at, t.updated_at, t.completed_at,
              CASE WHEN jsonb_typeof(first_payload -> 'batch_size') = 'number'
                        AND (first_payload ->> 'batch_size') ~ '^[0-9]{1,6}$'
                   THEN (first_payload ->> 'batch_size')::integer ELSE 1 END,
              0, '[]'::jsonb, NULL::text,
              array_fill(NULL::text, ARRAY[least(t.total, api_create_task.urls_limit)]);
END;
$$;
REVOKE ALL ON FUNCTION taskd.api_create_task(text, text, text, jsonb, text, integer, jsonb,
                                             integer, text, text, text[], integer, integer)
    FROM PUBLIC;

-- Whoever may set a task's user (the API role, when roles.sql has run) may call it, so that an
-- upgraded database serves the API before roles.sql runs again.
DO $grants$
DECLARE
    role_oid oid;
BEGIN
    FOR role_oid IN
        SELECT a.grantee
          FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
         WHERE p.oid = 'taskd.submit_task_for_user(text, text, text, jsonb, text, integer, jsonb, integer, timestamptz, text, text, text, bigint[], text, text[])'::regprocedure
           AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner AND a.grantee <> 0
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.api_create_task(text, text, text, '
                       'jsonb, text, integer, jsonb, integer, text, text, text[], integer, '
                       'integer) TO %s', role_oid::regrole);
    END LOOP;
END
$grants$;
