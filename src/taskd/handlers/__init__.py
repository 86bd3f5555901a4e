"""Handlers: where users' work runs. See :mod:`taskd.handlers.base` for the contract."""

from taskd.handlers.base import Handler, RegisteredHandler, SubtaskContext

__all__ = ["Handler", "RegisteredHandler", "SubtaskContext"]
