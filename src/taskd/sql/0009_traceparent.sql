-- taskd schema, version 9: a task keeps the W3C traceparent of the span that submitted it, so
-- that the executor's span of each run links to it (OpenTelemetry, the otel extra). It is read
-- by a separate query per claimed batch, and only while tracing is on: the claim is unchanged.
--
-- submit_task takes it as a new last argument, traceparent DEFAULT NULL. A second overload
-- would make every call that names no traceparent ambiguous, so the function is replaced:
-- dropped and created again with the same body, the same rules and errors, and the same
-- EXECUTE privileges (copied from the old one, so that roles.sql need not run again).

ALTER TABLE taskd.tasks ADD COLUMN traceparent text;

CREATE TEMPORARY TABLE submit_task_grants ON COMMIT DROP AS
SELECT acl.grantee, acl.is_grantable
  FROM pg_proc p, LATERAL aclexplode(p.proacl) AS acl
 WHERE p.oid = 'taskd.submit_task(text, text, jsonb, text, integer, jsonb, text, integer, timestamptz, integer)'::regprocedure
   AND acl.privilege_type = 'EXECUTE' AND acl.grantee <> p.proowner;
-- NULL: the defaults (PUBLIC may execute), which the new function has too.
CREATE TEMPORARY TABLE submit_task_acl_given ON COMMIT DROP AS
SELECT p.proacl IS NOT NULL AS given FROM pg_proc p
 WHERE p.oid = 'taskd.submit_task(text, text, jsonb, text, integer, jsonb, text, integer, timestamptz, integer)'::regprocedure;

DROP FUNCTION taskd.submit_task(text, text, jsonb, text, integer, jsonb, text, integer, timestamptz, integer);

CREATE FUNCTION taskd.submit_task(
    queue            text,
    kind             text,
    payloads         jsonb,
    name             text DEFAULT '',
    priority         integer DEFAULT 0,
    params           jsonb DEFAULT '{}'::jsonb,
    user_id          text DEFAULT NULL,
    max_attempts     integer DEFAULT 3,
    run_after        timestamptz DEFAULT NULL,
    max_payload_bytes integer DEFAULT 1048576,
    traceparent      text DEFAULT NULL
) RETURNS bigint
-- As its owner: EXECUTE on this function is what a submitting role needs (roles.sql).
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n          integer;
    object_index integer;
    bad_index  integer;
    deep_index integer;
    new_id     bigint;
    first_id   bigint;
    last_id    bigint;
    params_doc text;
    payload_doc text;
BEGIN
    IF queue IS NULL OR queue !~ '^[a-z][a-z0-9_-]*$' OR length(queue) > 63 THEN
        RAISE EXCEPTION 'taskd: queue % is not a valid queue name (^[a-z][a-z0-9_-]{0,62}$)',
            coalesce(quote_literal(queue), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF kind IS NULL OR kind !~ '^[A-Za-z0-9_.:-]+$' OR length(kind) > 200 THEN
        RAISE EXCEPTION 'taskd: kind % is not a valid kind (letters, digits, _ . : -, at most 200)',
            coalesce(quote_literal(kind), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF priority IS NULL OR priority NOT BETWEEN -1000 AND 1000 THEN
        RAISE EXCEPTION 'taskd: priority % is outside -1000..1000', coalesce(priority::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF max_attempts IS NULL OR max_attempts < 1 OR max_attempts > 1000 THEN
        RAISE EXCEPTION 'taskd: max_attempts % is outside 1..1000', coalesce(max_attempts::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    -- W3C trace context: version-traceid-parentid-flags, lower-case hex; version ff, an all-zero
    -- trace id and an all-zero parent id are invalid.
    IF traceparent IS NOT NULL AND (
           traceparent !~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
           OR left(traceparent, 2) = 'ff'
           OR substr(traceparent, 4, 32) = repeat('0', 32)
           OR substr(traceparent, 37, 16) = repeat('0', 16)) THEN
        RAISE EXCEPTION 'taskd: traceparent % is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)',
            quote_literal(left(traceparent, 100)) USING ERRCODE = '22023';
    END IF;
    IF params IS NULL OR jsonb_typeof(params) <> 'object' THEN
        RAISE EXCEPTION 'taskd: params must be a JSON object' USING ERRCODE = '22023';
    END IF;
    params_doc := params::text;
    IF length(params_doc) - length(translate(params_doc, '[{', '')) > 500
       AND taskd.json_too_deep(params_doc, 500) THEN
        RAISE EXCEPTION 'taskd: params is nested deeper than 500 levels' USING ERRCODE = '22023';
    END IF;
    IF payloads IS NULL OR jsonb_typeof(payloads) <> 'array' THEN
        RAISE EXCEPTION 'taskd: payloads must be a JSON array of objects' USING ERRCODE = '22023';
    END IF;
    n := jsonb_array_length(payloads);
    IF n = 0 THEN
        RAISE EXCEPTION 'taskd: a task needs at least one subtask (payloads is empty)'
            USING ERRCODE = '22023';
    END IF;
    IF n > 100000 THEN
        RAISE EXCEPTION 'taskd: payloads holds % subtasks; at most 100000', n USING ERRCODE = '22023';
    END IF;
    IF n = 1 THEN
        -- One payload, as most submits carry: expressions, no query over the array.
        payload_doc := (payloads->0)::text;
        object_index := CASE WHEN jsonb_typeof(payloads->0) <> 'object' THEN 1 END;
        bad_index := CASE WHEN octet_length(payload_doc) > max_payload_bytes THEN 1 END;
        deep_index := CASE WHEN length(payload_doc) - length(translate(payload_doc, '[{', '')) > 500
                                AND taskd.json_too_deep(payload_doc, 500) THEN 1 END;
    ELSE
        -- One pass over the payloads for all three checks; the errors keep their order.
        SELECT min(ord) FILTER (WHERE NOT is_object),
               min(ord) FILTER (WHERE octet_length(doc) > max_payload_bytes),
               -- The inline bracket count spares ordinary payloads a function call.
               min(ord) FILTER (WHERE length(doc) - length(translate(doc, '[{', '')) > 500
                                  AND taskd.json_too_deep(doc, 500))
          INTO object_index, bad_index, deep_index
          FROM (SELECT p.ord, jsonb_typeof(p.value) = 'object' AS is_object, p.value::text AS doc
                  FROM jsonb_array_elements(payloads) WITH ORDINALITY AS p(value, ord)) AS each_payload;
    END IF;
    IF object_index IS NOT NULL THEN
        RAISE EXCEPTION 'taskd: payloads[%] is not a JSON object', object_index - 1
            USING ERRCODE = '22023';
    END IF;
    IF bad_index IS NOT NULL THEN
        RAISE EXCEPTION 'taskd: payloads[%] is larger than % bytes', bad_index - 1, max_payload_bytes
            USING ERRCODE = '22023';
    END IF;
    -- Deeper than this, executors could not decode it (Python's JSON decoder recurses).
    IF deep_index IS NOT NULL THEN
        RAISE EXCEPTION 'taskd: payloads[%] is nested deeper than 500 levels', deep_index - 1
            USING ERRCODE = '22023';
    END IF;

    -- The subtasks first, then their task with their id range (no UPDATE of the new row).
    new_id := nextval('taskd.tasks_id_seq');
    IF n = 1 THEN
        INSERT INTO taskd.subtasks (task_id, queue, kind, priority, payload, max_attempts,
                                    run_after)
        VALUES (new_id, submit_task.queue, submit_task.kind, submit_task.priority, payloads->0,
                submit_task.max_attempts, coalesce(submit_task.run_after, now()))
        RETURNING id INTO first_id;
        last_id := first_id;
    ELSE
        WITH inserted AS (
            INSERT INTO taskd.subtasks (task_id, queue, kind, priority, payload, max_attempts,
                                        run_after)
            SELECT new_id, submit_task.queue, submit_task.kind, submit_task.priority, p.value,
                   submit_task.max_attempts, coalesce(submit_task.run_after, now())
              FROM jsonb_array_elements(payloads) WITH ORDINALITY AS p(value, ord)
             ORDER BY p.ord
            RETURNING id
        )
        SELECT min(id), max(id) INTO first_id, last_id FROM inserted;
    END IF;

    INSERT INTO taskd.tasks (id, name, queue, kind, priority, user_id, params, total,
                             first_subtask_id, last_subtask_id, traceparent)
    OVERRIDING SYSTEM VALUE
    VALUES (new_id, coalesce(submit_task.name, ''), submit_task.queue, submit_task.kind,
            submit_task.priority, submit_task.user_id, submit_task.params, n, first_id, last_id,
            submit_task.traceparent);

    PERFORM pg_notify('taskd', submit_task.queue);
    RETURN new_id;
END;
$$;

DO $grants$
DECLARE
    g record;
BEGIN
    IF (SELECT given FROM submit_task_acl_given) THEN
        REVOKE ALL ON FUNCTION taskd.submit_task(text, text, jsonb, text, integer, jsonb, text, integer, timestamptz, integer, text) FROM PUBLIC;
    END IF;
    FOR g IN SELECT grantee, is_grantable FROM submit_task_grants LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION taskd.submit_task(text, text, jsonb, text, integer, jsonb, text, integer, timestamptz, integer, text) TO %s%s',
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC'
                            ELSE g.grantee::regrole::text END,
                       CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$grants$;
