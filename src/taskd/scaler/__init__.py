"""Per-queue concurrency that follows the backlog.

:func:`decide` is the rule, a pure function; :class:`Scaler` is the daemon's component that
applies it to each queue's live :class:`taskd.executor.capacity.Capacity` every
``scale_check_interval``. The cluster-wide cap per queue (``cluster_max``) is enforced inside the
claim itself (:meth:`taskd.queue.Store.claim_subtasks`), not here.
"""

from taskd.scaler.scaler import Decision, Direction, Limit, Scaler, decide

__all__ = ["Decision", "Direction", "Limit", "Scaler", "decide"]
