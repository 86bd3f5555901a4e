"""What the routes depend on: the caller, the app's :class:`ApiStore` and settings (kept in
``app.state`` by :func:`taskd.api.app.create_app`), and the checks every route shares.

The dependencies are async: FastAPI runs a plain def dependency in a worker thread, two
thread hops per request (17% of the API's CPU under load).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from taskd.api import errors as codes
from taskd.api.auth import Principal
from taskd.api.errors import ApiError
from taskd.queue.accounts import ApiStore
from taskd.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="a JWT: `taskd api token --user U`")


async def principal(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> Principal:
    """The caller, authenticated by :class:`taskd.api.auth.AuthMiddleware` before the body
    was read."""
    found = getattr(request.state, "principal", None)
    if not isinstance(found, Principal):
        raise ApiError(401, codes.NOT_LOGGED_IN, "not logged in")
    return found


async def api_store(request: Request) -> ApiStore:
    """The app's database access (``app.state.api_store``)."""
    found = request.app.state.api_store
    assert isinstance(found, ApiStore)
    return found


async def app_settings(request: Request) -> Settings:
    """The settings the app was built with (``app.state.settings``)."""
    found = request.app.state.settings
    assert isinstance(found, Settings)
    return found


Caller = Annotated[Principal, Depends(principal)]
Api = Annotated[ApiStore, Depends(api_store)]
Config = Annotated[Settings, Depends(app_settings)]


async def reject_unknown_query(request: Request) -> None:
    """Unknown query parameters are 422, like unknown body fields: a typo must not be ignored."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = {param.alias for param in _query_params(dependant)}
    unknown = sorted(set(request.query_params.keys()) - known)
    if unknown:
        raise ApiError(422, codes.INVALID_INPUT, f"unknown query parameter {unknown[0]!r}",
                       [{"field": name, "problem": "unknown query parameter"}
                        for name in unknown])


def _query_params(dependant: Any) -> list[Any]:
    found = list(dependant.query_params)
    for sub in dependant.dependencies:
        found += _query_params(sub)
    return found


def require_admin(caller: Principal) -> None:
    """Raises :class:`ApiError` 403 unless the caller is an admin."""
    if not caller.is_admin:
        raise ApiError(403, codes.FORBIDDEN, "admin role required")
