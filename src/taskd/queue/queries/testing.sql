-- Queries of taskd.testing (taskd.queue.inspection). Each starts with a `-- name: <name>`
-- header and takes named, bound parameters. Names start with testing_.

-- name: testing_submitted_tasks
-- The tasks of a kind that this connection sees (what its own open transaction submitted too),
-- oldest first, each with its subtasks' payloads in order: its id range of the primary key.
SELECT t.id, t.queue, t.kind, t.priority, t.name, t.params, t.user_id, t.traceparent,
       (SELECT coalesce(jsonb_agg(s.payload ORDER BY s.id), '[]'::jsonb)
          FROM taskd.subtasks s
         WHERE s.id BETWEEN t.first_subtask_id AND t.last_subtask_id
           AND s.task_id = t.id) AS payloads
  FROM taskd.tasks t
 WHERE t.kind = %(kind)s
   AND (%(queue)s::text IS NULL OR t.queue = %(queue)s::text)
 ORDER BY t.id
 LIMIT %(limit)s;
