"""Bearer JWT authentication: HS256 with a shared secret, or RS256 with a public key.

``sub`` is the user id, ``exp`` is required, ``role: admin`` unlocks the admin endpoints.
:class:`AuthMiddleware` checks the token of every ``/v1`` request before the body is read, so
an anonymous caller learns nothing about the request it sent.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from starlette.types import ASGIApp, Receive, Scope, Send

from taskd.api.errors import INVALID_TOKEN, NOT_LOGGED_IN, error_response
from taskd.errors import ConfigError
from taskd.queue.accounts import USER_ID_PATTERN as USER_ID_PATTERN
from taskd.settings import ApiSettings

MIN_SECRET_BYTES = 32
# Verified tokens remembered per process (a few hundred bytes each): more than the clients
# that send requests within a minute, as a rule.
VERIFIED_TOKENS = 4096
# User ids: printable, no control characters, at most 200 characters. U+FFFD is refused too:
# it is what an undecodable byte in a URL path becomes, so it never names the id asked for.
_USER_ID = re.compile(USER_ID_PATTERN)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's ``sub`` and whether it carries ``role: admin``."""

    user_id: str
    is_admin: bool


def valid_user_id(value: Any) -> bool:
    """True for a user id taskd accepts (text, 1..200 characters, no control characters)."""
    if not isinstance(value, str) or not _USER_ID.match(value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON \\ud800 escape
        return False
    return True


class TokenVerifier:
    """Checks tokens against the configured key and algorithm.

    A token that passed is remembered (the last :data:`VERIFIED_TOKENS`, least recently used
    first out) with its ``exp``: a client sends the same token with every request, and
    PyJWT's decode was 5% of the API's CPU a request (py-spy, 50 clients). A remembered
    token is still refused from its ``exp`` on, as PyJWT would refuse it; one that failed is
    not remembered, so it is checked again each time. The cache is keyed on the whole token,
    signature included, and holds one process's key: nothing else can hit it.
    """

    def __init__(self, settings: ApiSettings) -> None:
        """Raises :class:`ConfigError` when the key is missing, too short or unreadable."""
        self.algorithm = settings.jwt_algorithm
        self.key: str | bytes = verification_key(settings)
        self._verified = functools.lru_cache(maxsize=VERIFIED_TOKENS)(self._decode)

    def verify(self, token: str) -> Principal:
        """The caller the token names. Raises :class:`jwt.InvalidTokenError` for any flaw,
        :class:`jwt.ExpiredSignatureError` from its ``exp`` on."""
        principal, expires = self._verified(token)
        if expires <= time.time():
            raise jwt.ExpiredSignatureError("Signature has expired")
        return principal

    def _decode(self, token: str) -> tuple[Principal, int]:
        claims = jwt.decode(
            token, self.key, algorithms=[self.algorithm],
            options={"require": ["exp", "sub"], "verify_exp": True},
        )
        user_id = claims.get("sub")
        if not isinstance(user_id, str) or not valid_user_id(user_id):
            raise jwt.InvalidTokenError("sub is not a valid user id")
        # PyJWT has checked that exp is a number and converts it the same way.
        return Principal(user_id=user_id, is_admin=claims.get("role") == "admin"), int(
            claims["exp"])


def _key_text(value: str, setting: str) -> str:
    """PEM text given inline, or read from the file it names."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    try:
        return Path(value).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {value}: {exc.strerror}") from exc


def verification_key(settings: ApiSettings) -> str | bytes:
    """The key tokens are checked with. Raises :class:`ConfigError` naming the setting."""
    if settings.jwt_algorithm == "HS256":
        if settings.jwt_secret is None:
            raise ConfigError(
                "api.jwt_secret [TASKD_API__JWT_SECRET] is not set: the API refuses to start "
                f"without a secret of at least {MIN_SECRET_BYTES} bytes"
            )
        secret = settings.jwt_secret.get_secret_value().encode("utf-8")
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"api.jwt_secret [TASKD_API__JWT_SECRET] is {len(secret)} bytes; "
                f"at least {MIN_SECRET_BYTES} are needed"
            )
        return secret
    if not settings.jwt_public_key:
        raise ConfigError(
            "api.jwt_public_key [TASKD_API__JWT_PUBLIC_KEY] is not set: RS256 needs the PEM "
            "public key (inline or a file path)"
        )
    pem = _key_text(settings.jwt_public_key, "api.jwt_public_key")
    try:
        jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).prepare_key(pem)
    except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"api.jwt_public_key is not an RSA public key: {exc}") from exc
    return pem


def parse_ttl(text: str) -> float:
    """``90``, ``45s``, ``30m``, ``1h``, ``7d`` as seconds. Raises :class:`ValueError`."""
    match = _DURATION.match(text)
    if not match or float(match[1]) <= 0:
        raise ValueError(f"{text!r} is not a duration like 3600, 30m, 1h or 7d")
    return float(match[1]) * _UNIT_SECONDS[match[2]]


def mint_token(
    settings: ApiSettings,
    user_id: str,
    *,
    admin: bool = False,
    ttl: float = 3600.0,
    private_key: str | None = None,
    now: float | None = None,
) -> str:
    """A signed token for ``user_id`` valid for ``ttl`` seconds.

    HS256 signs with ``api.jwt_secret``; RS256 needs ``private_key`` (PEM text or a path).
    Raises :class:`ConfigError` for a missing key and :class:`ValueError` for a bad user id.
    """
    if not valid_user_id(user_id):
        raise ValueError(f"user id {user_id!r} must be 1..200 characters without control "
                         "characters")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": user_id, "iat": issued, "exp": issued + int(ttl)}
    if admin:
        claims["role"] = "admin"
    if settings.jwt_algorithm == "HS256":
        key: str | bytes = verification_key(settings)
    else:
        if private_key is None:
            raise ConfigError("RS256 tokens need --private-key (the PEM private key)")
        key = _key_text(private_key, "--private-key")
    try:
        return jwt.encode(claims, key, algorithm=settings.jwt_algorithm)
    except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot sign with the given key: {exc}") from exc


class AuthMiddleware:
    """Authenticates every request under ``/v1``; puts the :class:`Principal` in the scope."""

    def __init__(self, app: ASGIApp, verifier: TokenVerifier, prefix: str = "/v1") -> None:
        self.app = app
        self.verifier = verifier
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == self.prefix
                                           or path.startswith(self.prefix + "/")):
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        challenge = {"WWW-Authenticate": 'Bearer realm="taskd"'}
        if header is None or not header.strip():
            await error_response(401, NOT_LOGGED_IN, "not logged in", None,
                                 challenge)(scope, receive, send)
            return
        scheme, _, token = header.strip().partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise jwt.InvalidTokenError("not a Bearer token")
            principal = self.verifier.verify(token.strip())
        except jwt.InvalidTokenError:
            await error_response(
                401, INVALID_TOKEN, "invalid token", None,
                {"WWW-Authenticate": 'Bearer realm="taskd", error="invalid_token"'},
            )(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
