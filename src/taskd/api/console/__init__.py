"""The operators' console: server-rendered pages under ``/console`` of ``taskd api``
(docs/console.md)."""

from taskd.api.console.app import create_console

__all__ = ["create_console"]
