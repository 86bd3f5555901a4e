"""The ``taskd`` command line. Each command group lives in a module of its own."""

from taskd.cli import api, migrate, status  # noqa: F401  (registers the commands)
from taskd.cli.app import app, main

__all__ = ["app", "main"]
