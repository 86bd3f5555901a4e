-- Steering a task after its submit (taskd.queue.tasks). Each starts with a `-- name: <name>`
-- header and takes named, bound parameters.

-- name: set_task_priority
-- The task's priority and its unfinished subtasks', then a wake-up (taskd.set_task_priority).
SELECT taskd.set_task_priority(task_id => %(task_id)s, priority => %(priority)s) AS moved;
