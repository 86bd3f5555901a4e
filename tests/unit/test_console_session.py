"""The console's cookie and CSRF tokens (taskd.api.console.session), without a server."""

from __future__ import annotations

import time

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response

from taskd.api.auth import mint_token
from taskd.api.console.session import SESSION_COOKIE, Sessions
from taskd.settings import ApiSettings

SETTINGS = ApiSettings(jwt_secret=SecretStr("s" * 40))


def _request(scheme: str, cookies: str = "") -> Request:
    headers = [(b"cookie", cookies.encode())] if cookies else []
    return Request({"type": "http", "scheme": scheme, "method": "GET", "path": "/console",
                    "headers": headers, "server": ("127.0.0.1", 8080), "query_string": b""})


def _cookie(response: Response) -> str:
    return next(v.decode() for k, v in response.raw_headers
                if k == b"set-cookie" and v.startswith(SESSION_COOKIE.encode()))


def test_the_cookie_is_secure_over_https_only() -> None:
    sessions = Sessions(SETTINGS)
    session = sessions.verify(mint_token(SETTINGS, "root", admin=True, ttl=300))
    assert session is not None and session.principal.is_admin
    for scheme, secure in [("https", True), ("http", False)]:
        response = Response()
        sessions.sign_in(response, _request(scheme), session)
        cookie = _cookie(response).lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
        assert ("; secure" in cookie) is secure
        assert 290 <= int(cookie.split("max-age=")[1].split(";")[0]) <= 300


def test_a_csrf_token_belongs_to_one_session_and_one_key() -> None:
    sessions = Sessions(SETTINGS)
    a = sessions.verify(mint_token(SETTINGS, "a", ttl=300))
    b = sessions.verify(mint_token(SETTINGS, "b", ttl=300))
    assert a is not None and b is not None
    assert sessions.csrf_ok(a, sessions.csrf_token(a))
    assert not sessions.csrf_ok(a, sessions.csrf_token(b))
    assert not sessions.csrf_ok(a, None) and not sessions.csrf_ok(a, "")
    # Two API processes with the same secret accept each other's forms; another key does not.
    assert Sessions(SETTINGS).csrf_ok(a, sessions.csrf_token(a))
    other = ApiSettings(jwt_secret=SecretStr("s" * 40), console_secret=SecretStr("c" * 40))
    assert not Sessions(other).csrf_ok(a, sessions.csrf_token(a))


def test_expired_or_foreign_tokens_make_no_session() -> None:
    sessions = Sessions(SETTINGS)
    expired = mint_token(SETTINGS, "root", ttl=10, now=time.time() - 100)
    foreign = mint_token(ApiSettings(jwt_secret=SecretStr("x" * 40)), "root", ttl=300)
    assert sessions.verify(expired) is None and sessions.verify(foreign) is None
    assert sessions.session(_request("http", f"{SESSION_COOKIE}={foreign}")) is None
