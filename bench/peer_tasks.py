"""Procrastinate's app and its no-op task, importable by the worker and the enqueuer."""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=os.environ.get("BENCH_PROCRASTINATE_URL", "")))


@app.task(name="noop", queue="default")
async def noop() -> None:
    return None
