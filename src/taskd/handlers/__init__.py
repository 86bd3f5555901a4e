"""Handlers: where users' work runs. See :mod:`taskd.handlers.base` for the contract.

:class:`HandlerRegistry` finds a handler by kind (built-ins, entry points of the group
``taskd.handlers``, then the ``handlers`` setting). This package imports only taskd's ground
floor (types, errors, settings), never psycopg: the daemon's runner
(:mod:`taskd.executor.runner`) runs handlers and turns what happened into outcomes.
"""

from taskd.errors import HandlerTimeout
from taskd.handlers.base import Handler, RegisteredHandler, SubtaskContext
from taskd.handlers.registry import ENTRY_POINT_GROUP, HandlerRegistry

__all__ = [
    "ENTRY_POINT_GROUP",
    "Handler",
    "HandlerRegistry",
    "HandlerTimeout",
    "RegisteredHandler",
    "SubtaskContext",
]
