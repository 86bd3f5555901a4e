"""Handlers: where users' work runs. See :mod:`taskd.handlers.base` for the contract.

:class:`HandlerRegistry` finds a handler by kind (built-ins, entry points of the group
``taskd.handlers``, then the ``handlers`` setting); :func:`run_subtask` runs one attempt and
turns what happened into an outcome.
"""

from taskd.errors import HandlerTimeout
from taskd.handlers.base import Handler, RegisteredHandler, SubtaskContext
from taskd.handlers.registry import ENTRY_POINT_GROUP, HandlerRegistry
from taskd.handlers.runner import RunResult, backoff_delay, run_subtask

__all__ = [
    "ENTRY_POINT_GROUP",
    "Handler",
    "HandlerRegistry",
    "HandlerTimeout",
    "RegisteredHandler",
    "RunResult",
    "SubtaskContext",
    "backoff_delay",
    "run_subtask",
]
