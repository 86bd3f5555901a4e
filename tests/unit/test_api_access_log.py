"""api.access_log: uvicorn's line per request is off unless asked for."""

from __future__ import annotations

from taskd.api.connections import ConnectionLimits
from taskd.api.server import _config
from taskd.settings import ApiSettings, Settings


def test_the_access_log_is_off_unless_asked_for() -> None:
    limits = ConnectionLimits(read_timeout=5, max_connections=10)
    default = Settings(api=ApiSettings(jwt_secret="x" * 40))
    asked = Settings(api=ApiSettings(jwt_secret="x" * 40, access_log=True))
    assert _config(object(), default, limits).access_log is False
    assert _config(object(), asked, limits).access_log is True
