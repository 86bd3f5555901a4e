"""A test kit for handler authors and services that submit work; real servers, never mocks.

- :func:`run_handler` runs one attempt of a handler through the daemon's own runner, without
  a database, and returns a :class:`HandlerOutcome`; checkpoints go to a
  :class:`CheckpointRecorder`.
- :func:`drain` runs every claimable subtask of a queue in this process: the real store's
  claim, the daemon's runner, the real completer.
- :func:`assert_submitted`: "this connection (or transaction) submitted a task of kind K with
  payload P".
- :mod:`taskd.testing.pytest_plugin`: the ``taskd_db`` fixture, a migrated throw-away database
  with ``drain``.
- :class:`FakeApis` (also known as :class:`FakeLumina`) fakes the external APIs that the
  ``lumina`` and photo-platform handlers drive: an image-job API and a content audit.

docs/handlers.md shows them in use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskd.queue.inspection import SubmittedTask
    from taskd.testing.assertions import assert_submitted
    from taskd.testing.draining import DrainReport, drain
    from taskd.testing.fake_apis import FakeApis, FakeApiStats, FakeLumina, FakeLuminaStats
    from taskd.testing.handlers import CheckpointRecorder, HandlerOutcome, run_handler

_WHERE = {
    "FakeApis": "taskd.testing.fake_apis",
    "FakeApiStats": "taskd.testing.fake_apis",
    "FakeLumina": "taskd.testing.fake_apis",
    "FakeLuminaStats": "taskd.testing.fake_apis",
    "run_handler": "taskd.testing.handlers",
    "HandlerOutcome": "taskd.testing.handlers",
    "CheckpointRecorder": "taskd.testing.handlers",
    "drain": "taskd.testing.draining",
    "DrainReport": "taskd.testing.draining",
    "assert_submitted": "taskd.testing.assertions",
    "SubmittedTask": "taskd.queue.inspection",
}

__all__ = [
    "CheckpointRecorder",
    "DrainReport",
    "FakeApiStats",
    "FakeApis",
    "FakeLumina",
    "FakeLuminaStats",
    "HandlerOutcome",
    "SubmittedTask",
    "assert_submitted",
    "drain",
    "run_handler",
]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `python -m taskd.testing.fake_apis` does not find the
    # module already imported by its own package (runpy warns about that), and importing the
    # package for one helper does not load the daemon for another.
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(name)
    return getattr(importlib.import_module(module), name)
