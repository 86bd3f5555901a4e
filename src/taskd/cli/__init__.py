"""The ``taskd`` command line. Each command group lives in a module of its own."""

from taskd.cli import (  # noqa: F401  (registers the commands)
    accounts,
    api,
    handlers,
    migrate,
    notifications,
    queues,
    run,
    schedules,
    status,
    tasks,
)
from taskd.cli.app import app, main

__all__ = ["app", "main"]
