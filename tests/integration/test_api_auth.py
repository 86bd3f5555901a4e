"""Authentication: every failure is a 401 in the one error shape; roles and ownership."""

from __future__ import annotations

import time
import warnings

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from taskd.api import mint_token, serve_in_thread
from taskd.api.auth import TokenVerifier, parse_ttl
from taskd.errors import ConfigError
from taskd.settings import ApiSettings
from tests.integration.api_support import (
    SECRET,
    Client,
    assert_error,
    create,
    make_settings,
    put_account,
)

ENDPOINTS = [
    ("GET", "/v1/tasks"), ("POST", "/v1/tasks"), ("GET", "/v1/tasks/1"),
    ("GET", "/v1/tasks/1/subtasks"), ("POST", "/v1/tasks/1/cancel"),
    ("POST", "/v1/tasks/1/retry"), ("PUT", "/v1/accounts/u"), ("GET", "/v1/accounts/u"),
    ("GET", "/v1/status"), ("GET", "/v1/queues"), ("POST", "/v1/queues/standard/pause"),
    ("POST", "/v1/queues/standard/resume"),
]


def _token(claims: dict[str, object], key: str = SECRET, algorithm: str = "HS256") -> str:
    # The right secret under HS512 is "short" for that algorithm; the warning is beside the point.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.encode(claims, key, algorithm=algorithm)


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_missing_token_is_not_logged_in_on_every_endpoint(
    client: Client, method: str, path: str
) -> None:
    # A malformed body must not get past the missing token either.
    response = client().request(method, path, content=b"{not json")
    assert_error(response, 401, 4010, "not logged in")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        _token({"sub": "alice", "exp": int(time.time()) + 600}, key="x" * 40),  # bad signature
        _token({"sub": "alice", "exp": int(time.time()) - 5}),  # expired
        _token({"sub": "alice"}),  # no exp
        _token({"exp": int(time.time()) + 600}),  # no sub
        _token({"sub": "", "exp": int(time.time()) + 600}),  # empty sub
        _token({"sub": 7, "exp": int(time.time()) + 600}),  # sub not text
        _token({"sub": "alice", "exp": int(time.time()) + 600}, algorithm="HS512"),
        jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, None, algorithm="none"),
    ],
    ids=["garbage", "bad-signature", "expired", "no-exp", "no-sub", "empty-sub", "sub-int",
         "wrong-algorithm", "alg-none"],
)
def test_bad_tokens_are_invalid_token(client: Client, token: str) -> None:
    assert_error(client(token=token).get("/v1/tasks"), 401, 4011, "invalid token")


def test_non_bearer_scheme_is_invalid_token(client: Client) -> None:
    c = client()
    response = c.get("/v1/tasks", headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert_error(response, 401, 4011, "invalid token")


def test_a_valid_token_is_accepted(client: Client) -> None:
    assert client("alice").get("/v1/tasks").status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), [
    ("PUT", "/v1/accounts/bob", {"is_member": True, "quota_remaining": 5}),
    ("GET", "/v1/status", None),
    ("GET", "/v1/accounts/bob", None),
    ("GET", "/v1/tasks?user_id=bob", None),
])
def test_admin_endpoints_refuse_plain_users(
    client: Client, method: str, path: str, body: object
) -> None:
    response = client("alice").request(method, path, json=body)
    assert_error(response, 403, 4003, "admin role required")


@pytest.mark.parametrize(("method", "suffix"), [
    ("GET", ""), ("GET", "/subtasks"), ("POST", "/cancel"), ("POST", "/retry"),
    ("PATCH", ""),
])
def test_another_users_task_is_404_exactly_as_a_missing_one(
    client: Client, method: str, suffix: str
) -> None:
    put_account(client, "alice")
    task = create(client("alice"), name="secret-name", params={"secret": "s3cr3t"}).json()
    body = {"priority": 5} if method == "PATCH" else None
    response = client("mallory").request(method, f"/v1/tasks/{task['id']}{suffix}", json=body)
    missing = client("mallory").request(method, f"/v1/tasks/{task['id'] + 1000}{suffix}",
                                        json=body)
    assert_error(response, 404, 4004, "task not found")
    assert "secret" not in response.text
    # Byte for byte the answer for an id that does not exist, but for the id itself.
    assert response.text.replace(str(task["id"]), "ID") == missing.text.replace(
        str(task["id"] + 1000), "ID")
    assert response.headers.get("content-length") == missing.headers.get("content-length")
    # The owner and an admin get through.
    owner = client("alice").request(method, f"/v1/tasks/{task['id']}{suffix}", json=body)
    admin = client("root", admin=True).request(method, f"/v1/tasks/{task['id']}{suffix}",
                                               json=body)
    assert owner.status_code in (200, 409), owner.text  # 409: retry with nothing failed
    assert admin.status_code == owner.status_code or suffix == "/cancel", admin.text


def test_api_refuses_to_start_without_a_usable_secret(database_url: str) -> None:
    for secret in (None, "short"):
        settings = make_settings(database_url, jwt_secret=secret)
        with pytest.raises(ConfigError, match="jwt_secret"), \
                serve_in_thread(settings, database_url):
            pass  # pragma: no cover


def test_rs256_tokens_verify_with_the_public_key(database_url: str) -> None:
    import httpx

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    settings = make_settings(database_url, jwt_algorithm="RS256", jwt_public_key=public,
                             jwt_secret=None)
    good = mint_token(settings.api, "alice", private_key=private)
    # An HS256 token signed with the public key text (the classic confusion) is refused.
    confused = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60},
                          SECRET, algorithm="HS256")
    with serve_in_thread(settings, database_url) as running:
        with httpx.Client(base_url=running.url) as c:
            ok = c.get("/v1/tasks", headers={"Authorization": f"Bearer {good}"})
            bad = c.get("/v1/tasks", headers={"Authorization": f"Bearer {confused}"})
    assert ok.status_code == 200, ok.text
    assert_error(bad, 401, 4011, "invalid token")


def test_rs256_without_a_public_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="jwt_public_key"):
        TokenVerifier(ApiSettings(jwt_algorithm="RS256"))


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("45s", 45), ("30m", 1800),
                                               ("1h", 3600), ("7d", 604800)])
def test_parse_ttl(text: str, seconds: float) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1h", "1w", "abc"])
def test_parse_ttl_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_ttl(text)


def test_a_verified_token_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = TokenVerifier(ApiSettings(jwt_secret=SECRET))
    token = _token({"sub": "alice", "exp": int(time.time()) + 600})
    assert verifier.verify(token).user_id == "alice"

    def no_second_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("the token was decoded again")

    monkeypatch.setattr(jwt, "decode", no_second_decode)
    assert verifier.verify(token).user_id == "alice"
    # Another token (here: the same claims, another signature) is still checked.
    with pytest.raises(AssertionError, match="decoded again"):
        verifier.verify(_token({"sub": "alice", "exp": int(time.time()) + 600},
                               key="y" * 40))


def test_a_remembered_token_is_refused_from_its_exp_on() -> None:
    verifier = TokenVerifier(ApiSettings(jwt_secret=SECRET))
    expires = int(time.time()) + 2
    token = _token({"sub": "alice", "exp": expires})
    assert verifier.verify(token).user_id == "alice"
    deadline = time.monotonic() + 10
    while time.time() < expires and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for the clock itself: nothing else to poll
    with pytest.raises(jwt.ExpiredSignatureError):
        verifier.verify(token)


def test_a_refused_token_is_not_remembered() -> None:
    verifier = TokenVerifier(ApiSettings(jwt_secret=SECRET))
    token = _token({"sub": "alice", "exp": int(time.time()) + 600}, key="x" * 40)
    for _ in range(2):
        with pytest.raises(jwt.InvalidSignatureError):
            verifier.verify(token)
