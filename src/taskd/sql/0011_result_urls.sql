-- taskd schema, version 11: a task's result URLs for SQL clients.
--
-- task_result_urls(task_id): the image URLs of a task's subtasks, one entry per subtask in
-- subtask (id) order: a completed subtask's result->>'image_url' when that is a string, else
-- NULL (not finished, failed, or no URL), so entry i belongs to subtask i (the i-th pose of a
-- model_pose12 task). NULL for a task that does not exist. max_urls: only the first that many
-- subtasks (the API shows the first 1,000); NULL: all. Plain SQL, as the caller, through the
-- task's id range: like task_subtasks, any role that may read tasks and subtasks may call
-- it. The id range is read in a LATERAL subquery, with the task's range as
-- parameters, so that the primary key's order serves ORDER BY and LIMIT stops the scan early
-- (joined, as task_subtasks does, the planner sorts every subtask of the task first).

CREATE FUNCTION taskd.task_result_urls(task_id bigint, max_urls integer DEFAULT NULL)
RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT array_agg(CASE WHEN s.status = 'completed'
                               AND jsonb_typeof(s.result -> 'image_url') = 'string'
                          THEN s.result ->> 'image_url' END ORDER BY s.id)
      FROM taskd.tasks t
     CROSS JOIN LATERAL (
            SELECT s.id, s.status, s.result
              FROM taskd.subtasks s
             WHERE s.id BETWEEN t.first_subtask_id AND t.last_subtask_id AND s.task_id = t.id
             ORDER BY s.id
             LIMIT task_result_urls.max_urls) s
     WHERE t.id = task_result_urls.task_id
$$;
