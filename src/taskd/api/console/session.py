"""The console's sign-in: the API's own JWT, kept in a cookie, and CSRF tokens for its forms.

The cookie holds the token as pasted (or minted by ``taskd api token``): HttpOnly (no script
reads it), SameSite=Strict (no other site's page sends it), Secure when the request came over
HTTPS, limited to ``/console`` and to the token's own lifetime. Each request verifies it with
the API's :class:`~taskd.api.auth.TokenVerifier`: the roles are the API's (``role: admin``
acts; any other valid token reads).

A form's CSRF token is an HMAC of the session's token under a server key, so it needs no
storage and holds across API processes that share the key: ``api.console_secret`` when set,
else one derived from ``api.jwt_secret`` (HS256), else (RS256 without it) a key of this
process only. The sign-in form, before any session, is tied the same way to a random cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import jwt
from starlette.requests import Request
from starlette.responses import Response

from taskd.api.auth import Principal, TokenVerifier
from taskd.settings import ApiSettings

SESSION_COOKIE = "taskd_console"
LOGIN_COOKIE = "taskd_console_login"
COOKIE_PATH = "/console"


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in operator: who, the token they signed in with, and when it expires."""

    principal: Principal
    token: str
    expires_at: float


def csrf_key(settings: ApiSettings) -> bytes:
    """The key of the forms' CSRF tokens (see the module's docstring)."""
    if settings.console_secret is not None:
        base = settings.console_secret.get_secret_value().encode("utf-8")
    elif settings.jwt_algorithm == "HS256" and settings.jwt_secret is not None:
        base = settings.jwt_secret.get_secret_value().encode("utf-8")
    else:
        base = secrets.token_bytes(32)
    return hmac.new(base, b"taskd console csrf v1", hashlib.sha256).digest()


class Sessions:
    """Reads and writes the console's cookies; checks CSRF tokens."""

    def __init__(self, settings: ApiSettings) -> None:
        self.verifier = TokenVerifier(settings)
        self.key = csrf_key(settings)

    def session(self, request: Request) -> Session | None:
        """The request's signed-in session, or None (no cookie, or its token is no longer
        valid: expired, or signed with another key)."""
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        return self.verify(token)

    def verify(self, token: str) -> Session | None:
        """A session for ``token`` when the API would accept it, else None."""
        try:
            principal = self.verifier.verify(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            return None
        return Session(principal=principal, token=token, expires_at=float(claims["exp"]))

    def sign_in(self, response: Response, request: Request, session: Session) -> None:
        """Keep the session's token in the cookie until the token expires."""
        max_age = max(1, int(session.expires_at - time.time()))
        response.set_cookie(
            SESSION_COOKIE, session.token, max_age=max_age, path=COOKIE_PATH, httponly=True,
            samesite="strict", secure=request.url.scheme == "https",
        )
        response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)

    @staticmethod
    def sign_out(response: Response, request: Request) -> None:
        response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True,
                               samesite="strict", secure=request.url.scheme == "https")

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self.key, f"{purpose}\x00{value}".encode(), hashlib.sha256).hexdigest()

    def csrf_token(self, session: Session) -> str:
        """The CSRF token every form of this session carries."""
        return self._mac("session", session.token)

    def csrf_ok(self, session: Session, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(self.csrf_token(session), sent)

    def login_nonce(self, request: Request, response: Response) -> str:
        """The sign-in form's CSRF token, tied to a random cookie set here (kept if set)."""
        nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, path=COOKIE_PATH,
                            httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return self._mac("login", nonce)

    def login_ok(self, request: Request, sent: str | None) -> bool:
        nonce = request.cookies.get(LOGIN_COOKIE)
        return (nonce is not None and sent is not None
                and hmac.compare_digest(self._mac("login", nonce), sent))
