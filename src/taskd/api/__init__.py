"""The thin HTTP API (``taskd api``): FastAPI on uvicorn over the same database.

:func:`create_app` builds the application over an open :class:`taskd.queue.Store`;
:func:`serve` runs it (``taskd api``); :func:`serve_in_thread` runs it in the background.
"""

from taskd.api.app import create_app
from taskd.api.auth import Principal, TokenVerifier, mint_token, parse_ttl
from taskd.api.errors import ApiError
from taskd.api.server import RunningApi, serve, serve_in_thread

__all__ = [
    "ApiError",
    "Principal",
    "RunningApi",
    "TokenVerifier",
    "create_app",
    "mint_token",
    "parse_ttl",
    "serve",
    "serve_in_thread",
]
