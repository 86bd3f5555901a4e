"""Hostile input over the HTTP API, table-driven.

Every row sends one request that must be refused with its documented status and errorCode in
the one error shape; never 500, never a traceback in the answer or in the server's log; and the
taskd tables are exactly as they were before (row counts and a checksum of every row).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from taskd.api import RunningApi
from tests.integration.api_support import (
    SECRET,
    Client,
    put_account,
)

Conn = psycopg.Connection[tuple[Any, ...]]
NOW = int(time.time())
BODY_LIMIT = 2 * 1024 * 1024


def table_snapshot(conn: Conn) -> dict[str, tuple[int, str]]:
    """Row count and an md5 over every row's text, per table of schema taskd."""
    tables = [row[0] for row in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'taskd' ORDER BY tablename")]
    snapshot = {}
    for table in tables:
        count, digest = conn.execute(
            psycopg.sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(t::text, chr(10) ORDER BY t::text)),"
                " '') FROM taskd.{} t").format(psycopg.sql.Identifier(table))
        ).fetchone() or (0, "")
        snapshot[table] = (int(count), str(digest))
    return snapshot


def _token(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256",
           headers: dict[str, Any] | None = None) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: str, payload: str, signature: str = "c2ln") -> str:
    return f"{_b64(header.encode())}.{_b64(payload.encode())}.{signature}"


_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA_PEM = _RSA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
ALICE = {"sub": "alice", "exp": NOW + 3600}
DEEP = 10_000
# A token's nesting: deeper than Python's JSON recursion limit, and small enough that the
# Authorization header stays within the API's 16 KiB bound on a request's headers.
TOKEN_DEEP = 5_000

# Tokens that must all be "invalid token" (401, 4011), sent with a valid create body.
BAD_TOKENS: dict[str, str] = {
    "alg-none": _token(ALICE, None, "none"),
    "alg-none-admin": _token({**ALICE, "role": "admin"}, None, "none"),
    "alg-none-hand-made": _unsigned('{"alg":"none","typ":"JWT"}', json.dumps(ALICE), ""),
    "alg-None-capitalised": _unsigned('{"alg":"None"}', json.dumps(ALICE), ""),
    "wrong-key": _token(ALICE, "x" * 40),
    "wrong-key-admin": _token({**ALICE, "role": "admin"}, "y" * 40),
    "expired": _token({"sub": "alice", "exp": NOW - 1}),
    "expired-long-ago": _token({"sub": "alice", "exp": 0}),
    "exp-as-text": _token({"sub": "alice", "exp": "tomorrow"}),
    "exp-beyond-64-bits-unsigned": _unsigned('{"alg":"HS256"}',
                                             f'{{"sub":"alice","exp":{2**70}}}'),
    "exp-1e309": _unsigned('{"alg":"HS256"}', '{"sub":"alice","exp":1e309}'),
    "no-exp": _token({"sub": "alice"}),
    "rs256-signed-for-hs256": _token(ALICE, _RSA_PEM, "RS256"),
    "hs512": _token(ALICE, SECRET, "HS512"),
    "sub-with-nul": _token({"sub": "al\x00ice", "exp": NOW + 3600}),
    "sub-with-newline": _token({"sub": "alice\nadmin", "exp": NOW + 3600}),
    "sub-too-long": _token({"sub": "a" * 201, "exp": NOW + 3600}),
    "sub-is-a-list": _token({"sub": ["alice"], "exp": NOW + 3600}),
    "sub-lone-surrogate": _unsigned('{"alg":"HS256"}', '{"sub":"\\ud800","exp":'
                                    + str(NOW + 3600) + "}"),
    "truncated": _token(ALICE).rsplit(".", 1)[0],
    "signature-stripped": _token(ALICE).rsplit(".", 1)[0] + ".",
    "header-not-json": f"{_b64(b'{not json')}.{_b64(json.dumps(ALICE).encode())}.c2ln",
    "header-invalid-utf8": f"{_b64(bytes([0xFF, 0xFE]))}.{_b64(b'{}')}.c2ln",
    "header-deeply-nested": _unsigned('{"alg":"HS256","x":' + "[" * TOKEN_DEEP + "]" * TOKEN_DEEP
                                      + "}",
                                      json.dumps(ALICE)),
    "claims-deeply-nested": _unsigned('{"alg":"HS256"}', '{"x":' + "[" * TOKEN_DEEP
                                      + "]" * TOKEN_DEEP + "}"),
    "not-base64": "!!!.???.***",
    "empty-parts": "..",
    "sql-metacharacters": "' OR '1'='1",
}

VALID_BODY = {"kind": "noop", "subtasks": [{"n": 1}]}


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@dataclass(frozen=True)
class Case:
    """One hostile request and what it must get."""

    id: str
    method: str
    path: str
    status: int
    code: int
    user: str | None = "alice"
    admin: bool = False
    token: str | None = None
    json_body: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] | None = None

    def __str__(self) -> str:
        return self.id


def _body(**fields: Any) -> dict[str, Any]:
    return {**VALID_BODY, **fields}


def _raw_body(text: str) -> bytes:
    return text.encode()


CASES: list[Case] = [
    # -- tokens --------------------------------------------------------------------------
    *[Case(f"token-{name}", "POST", "/v1/tasks", 401, 4011, user=None, token=token,
           json_body=VALID_BODY) for name, token in BAD_TOKENS.items()],
    Case("no-authorization", "POST", "/v1/tasks", 401, 4010, user=None, json_body=VALID_BODY),
    Case("basic-scheme", "POST", "/v1/tasks", 401, 4011, user=None, json_body=VALID_BODY,
         headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"}),
    Case("bearer-without-token", "POST", "/v1/tasks", 401, 4011, user=None,
         json_body=VALID_BODY, headers={"Authorization": "Bearer"}),
    Case("bearer-huge-token", "POST", "/v1/tasks", 401, 4011, user=None, json_body=VALID_BODY,
         headers={"Authorization": "Bearer " + "a" * 8000}),
    # -- malformed, truncated and mistyped bodies ----------------------------------------
    Case("malformed-json", "POST", "/v1/tasks", 422, 4001, content=b"{not json",
         headers={"Content-Type": "application/json"}),
    Case("truncated-json", "POST", "/v1/tasks", 422, 4001,
         content=_raw_body('{"kind": "noop", "subtasks": [{"n": 1}'),
         headers={"Content-Type": "application/json"}),
    Case("empty-body", "POST", "/v1/tasks", 422, 4001, content=b"",
         headers={"Content-Type": "application/json"}),
    Case("json-null", "POST", "/v1/tasks", 422, 4001, json_body=None, content=b"null",
         headers={"Content-Type": "application/json"}),
    Case("json-array", "POST", "/v1/tasks", 422, 4001, json_body=[VALID_BODY]),
    Case("json-string", "POST", "/v1/tasks", 422, 4001, json_body="noop"),
    Case("not-json-content-type", "POST", "/v1/tasks", 422, 4001,
         content=json.dumps(VALID_BODY).encode(), headers={"Content-Type": "text/plain"}),
    Case("kind-number", "POST", "/v1/tasks", 422, 4001, json_body=_body(kind=5)),
    Case("kind-unknown", "POST", "/v1/tasks", 400, 4001, json_body=_body(kind="rm -rf")),
    Case("subtasks-string", "POST", "/v1/tasks", 422, 4001, json_body=_body(subtasks="x")),
    Case("subtasks-of-numbers", "POST", "/v1/tasks", 422, 4001, json_body=_body(subtasks=[1])),
    Case("subtasks-empty", "POST", "/v1/tasks", 422, 4001, json_body=_body(subtasks=[])),
    Case("priority-text", "POST", "/v1/tasks", 422, 4001, json_body=_body(priority="high")),
    Case("priority-bool", "POST", "/v1/tasks", 422, 4001, json_body=_body(priority=True)),
    Case("priority-float", "POST", "/v1/tasks", 422, 4001, json_body=_body(priority=1.5)),
    Case("priority-whole-float", "POST", "/v1/tasks", 422, 4001, json_body=_body(priority=1.0)),
    Case("priority-numeric-text", "POST", "/v1/tasks", 422, 4001, json_body=_body(priority="5")),
    Case("batch-size-text", "POST", "/v1/tasks", 422, 4001,
         json_body={"kind": "noop", "prompts": ["a"], "batch_size": "2"}),
    Case("params-list", "POST", "/v1/tasks", 422, 4001, json_body=_body(params=[1])),
    Case("unknown-field", "POST", "/v1/tasks", 422, 4001, json_body=_body(owner="bob")),
    Case("user-id-field-smuggled", "POST", "/v1/tasks", 422, 4001,
         json_body=_body(user_id="bob")),
    Case("both-subtasks-and-prompts", "POST", "/v1/tasks", 422, 4001,
         json_body=_body(prompts=["a"])),
    Case("batch-size-zero", "POST", "/v1/tasks", 422, 4001,
         json_body={"kind": "noop", "prompts": ["a"], "batch_size": 0}),
    Case("variables-explode", "POST", "/v1/tasks", 422, 4001,
         json_body={"kind": "noop", "prompts": ["{a}{b}"],
                    "variables": {"a": list(range(1000)), "b": list(range(1000))}}),
    Case("variable-name-sql", "POST", "/v1/tasks", 422, 4001,
         json_body={"kind": "noop", "prompts": ["a"], "variables": {"a'--": ["x"]}}),
    # -- huge numbers ----------------------------------------------------------------------
    Case("priority-beyond-64-bits", "POST", "/v1/tasks", 422, 4001,
         json_body=_body(priority=2**70)),
    Case("priority-1e309", "POST", "/v1/tasks", 422, 4001,
         content=_raw_body('{"kind": "noop", "subtasks": [{"n": 1}], "priority": 1e309}'),
         headers={"Content-Type": "application/json"}),
    Case("priority-nan", "POST", "/v1/tasks", 422, 4001,
         content=_raw_body('{"kind": "noop", "subtasks": [{"n": 1}], "priority": NaN}'),
         headers={"Content-Type": "application/json"}),
    Case("params-1e309", "POST", "/v1/tasks", 422, 4001,
         content=_raw_body('{"kind": "noop", "subtasks": [{"n": 1}], "params": {"x": 1e309}}'),
         headers={"Content-Type": "application/json"}),
    Case("payload-infinity", "POST", "/v1/tasks", 422, 4001,
         content=_raw_body('{"kind": "noop", "subtasks": [{"n": -Infinity}]}'),
         headers={"Content-Type": "application/json"}),
    Case("variable-value-1e309", "POST", "/v1/tasks", 422, 4001,
         content=_raw_body('{"kind": "noop", "prompts": ["{a}"], "variables": {"a": [1e309]}}'),
         headers={"Content-Type": "application/json"}),
    Case("int-of-5000-digits", "POST", "/v1/tasks", 400, 4001,
         content=_raw_body('{"kind": "noop", "subtasks": [{"n": ' + "9" * 5000 + "}]}"),
         headers={"Content-Type": "application/json"}),
    # -- sizes and depth -------------------------------------------------------------------
    Case("body-over-limit-declared", "POST", "/v1/tasks", 413, 4013,
         content=b'{"kind": "noop", "subtasks": [{"x": "' + b"a" * BODY_LIMIT + b'"}]}',
         headers={"Content-Type": "application/json"}),
    Case("params-nested-10000", "POST", "/v1/tasks", 400, 4001,
         content=_raw_body('{"kind": "noop", "subtasks": [{"n": 1}], "params": {"x": '
                           + _nested(DEEP) + "}}"),
         headers={"Content-Type": "application/json"}),
    Case("payload-nested-10000-objects", "POST", "/v1/tasks", 400, 4001,
         content=_raw_body('{"kind": "noop", "subtasks": [' + '{"a":' * DEEP + "1"
                           + "}" * DEEP + "]}"),
         headers={"Content-Type": "application/json"}),
    Case("payload-over-max-payload-bytes", "POST", "/v1/tasks", 422, 4001,
         json_body=_body(subtasks=[{"x": "a" * (1024 * 1024 + 10)}])),
    # -- NUL bytes and invalid UTF-8 --------------------------------------------------------
    Case("name-nul", "POST", "/v1/tasks", 422, 4001, json_body=_body(name="a\x00b")),
    Case("params-nul-value", "POST", "/v1/tasks", 422, 4001,
         json_body=_body(params={"x": "a\x00"})),
    Case("params-nul-key", "POST", "/v1/tasks", 422, 4001,
         json_body=_body(params={"\x00": 1})),
    Case("payload-nul", "POST", "/v1/tasks", 422, 4001,
         json_body=_body(subtasks=[{"deep": [{"x": "\x00"}]}])),
    Case("prompt-nul", "POST", "/v1/tasks", 422, 4001,
         json_body={"kind": "noop", "prompts": ["a\x00"]}),
    Case("variable-value-nul", "POST", "/v1/tasks", 422, 4001,
         json_body={"kind": "noop", "prompts": ["{a}"], "variables": {"a": ["\x00"]}}),
    Case("name-lone-surrogate", "POST", "/v1/tasks", 422, 4001,
         content=_raw_body('{"kind": "noop", "subtasks": [{"n": 1}], "name": "\\ud800"}'),
         headers={"Content-Type": "application/json"}),
    Case("payload-lone-surrogate", "POST", "/v1/tasks", 422, 4001,
         content=_raw_body('{"kind": "noop", "subtasks": [{"n": "\\udfff"}]}'),
         headers={"Content-Type": "application/json"}),
    Case("params-lone-surrogate-key", "POST", "/v1/tasks", 422, 4001,
         content=_raw_body('{"kind": "noop", "subtasks": [{"n": 1}], "params": {"\\ud800": 1}}'),
         headers={"Content-Type": "application/json"}),
    Case("body-invalid-utf8", "POST", "/v1/tasks", 400, 4001,
         content=b'{"kind": "noop", "subtasks": [{"n": "\xff\xfe"}]}',
         headers={"Content-Type": "application/json"}),
    Case("body-utf16", "POST", "/v1/tasks", 422, 4001,
         content=json.dumps(VALID_BODY | {"name": "\x00"}).encode("utf-16"),
         headers={"Content-Type": "application/json"}),
    Case("idempotency-key-too-long", "POST", "/v1/tasks", 422, 4001, json_body=VALID_BODY,
         headers={"Idempotency-Key": "k" * 201}),
    Case("idempotency-key-space", "POST", "/v1/tasks", 422, 4001, json_body=VALID_BODY,
         headers={"Idempotency-Key": "a b"}),
    # -- SQL metacharacters where they are not data ------------------------------------------
    Case("queue-sql", "POST", "/v1/tasks", 422, 4001,
         json_body=_body(queue="standard'; DROP TABLE taskd.tasks; --")),
    Case("kind-sql", "POST", "/v1/tasks", 400, 4001,
         json_body=_body(kind="noop' OR '1'='1")),
    Case("list-status-sql", "GET", "/v1/tasks", 422, 4001,
         params={"status": "pending' OR 1=1 --"}),
    Case("list-cursor-sql", "GET", "/v1/tasks", 422, 4001, params={"cursor": "1 OR 1=1"}),
    Case("account-path-sql", "GET", "/v1/accounts/x'%20OR%20'1'='1", 403, 4003),
    # -- another user's things: a task answers exactly as a missing one ----------------------
    Case("read-bobs-task", "GET", "/v1/tasks/{bob_task}", 404, 4004),
    Case("bobs-subtasks", "GET", "/v1/tasks/{bob_task}/subtasks", 404, 4004),
    Case("cancel-bobs-task", "POST", "/v1/tasks/{bob_task}/cancel", 404, 4004),
    Case("retry-bobs-task", "POST", "/v1/tasks/{bob_task}/retry", 404, 4004),
    Case("reprioritise-bobs-task", "PATCH", "/v1/tasks/{bob_task}", 404, 4004,
         json_body={"priority": 1000}),
    Case("list-bobs-tasks", "GET", "/v1/tasks", 403, 4003, params={"user_id": "bob"}),
    Case("read-bobs-account", "GET", "/v1/accounts/bob", 403, 4003),
    Case("give-myself-quota", "PUT", "/v1/accounts/alice", 403, 4003,
         json_body={"is_member": True, "quota_remaining": 1_000_000}),
    Case("status-as-user", "GET", "/v1/status", 403, 4003),
    Case("role-admin-in-another-claim", "PUT", "/v1/accounts/alice", 403, 4003, user=None,
         token=_token({**ALICE, "roles": ["admin"], "admin": True}),
         json_body={"is_member": True, "quota_remaining": 5}),
    # -- ids, pagination and cursors ---------------------------------------------------------
    Case("task-id-zero", "GET", "/v1/tasks/0", 422, 4001),
    Case("task-id-negative", "GET", "/v1/tasks/-1", 422, 4001),
    Case("task-id-beyond-64-bits", "GET", "/v1/tasks/99999999999999999999999", 422, 4001),
    Case("task-id-2-pow-63", "POST", "/v1/tasks/9223372036854775808/cancel", 422, 4001),
    Case("task-id-max", "GET", "/v1/tasks/9223372036854775807", 404, 4004),
    Case("task-id-float", "GET", "/v1/tasks/1e3", 422, 4001),
    Case("task-id-nul", "GET", "/v1/tasks/%00", 422, 4001),
    Case("task-id-invalid-utf8", "GET", "/v1/tasks/%FF%FE", 422, 4001),
    Case("limit-negative", "GET", "/v1/tasks", 422, 4001, params={"limit": "-1"}),
    Case("limit-zero", "GET", "/v1/tasks", 422, 4001, params={"limit": "0"}),
    Case("limit-huge", "GET", "/v1/tasks", 422, 4001, params={"limit": "1" + "0" * 30}),
    Case("limit-1e309", "GET", "/v1/tasks", 422, 4001, params={"limit": "1e309"}),
    Case("cursor-negative", "GET", "/v1/tasks", 422, 4001, params={"cursor": "-1"}),
    Case("cursor-beyond-64-bits", "GET", "/v1/tasks", 422, 4001,
         params={"cursor": "9" * 30}),
    Case("cursor-nul", "GET", "/v1/tasks", 422, 4001, params={"cursor": "1\x00"}),
    Case("subtasks-limit-huge", "GET", "/v1/tasks/{bob_task}/subtasks", 422, 4001, user="bob",
         params={"limit": "9" * 20}),
    Case("subtasks-cursor-negative", "GET", "/v1/tasks/{bob_task}/subtasks", 422, 4001,
         user="bob", params={"cursor": "-5"}),
    Case("list-kind-nul", "GET", "/v1/tasks", 422, 4001, params={"kind": "no\x00op"}),
    Case("list-kind-too-long", "GET", "/v1/tasks", 422, 4001, params={"kind": "k" * 201}),
    Case("list-user-id-nul", "GET", "/v1/tasks", 422, 4001, user="root", admin=True,
         params={"user_id": "bob\x00"}),
    Case("unknown-query-parameter", "GET", "/v1/tasks", 422, 4001, params={"offset": "5"}),
    # -- accounts (as admin) with hostile values ----------------------------------------------
    *[Case(f"account-quota-{name}", "PUT", "/v1/accounts/carol", 422, 4001, user="root",
           admin=True, content=_raw_body('{"is_member": true, "quota_remaining": ' + value + "}"),
           headers={"Content-Type": "application/json"})
      for name, value in [("negative", "-1"), ("beyond-32-bits", str(2**31)),
                          ("beyond-64-bits", str(2**70)), ("1e309", "1e309"),
                          ("text", '"5"'), ("bool", "true"), ("float", "5.0"),
                          ("null", "null")]],
    Case("account-member-text", "PUT", "/v1/accounts/carol", 422, 4001, user="root",
         admin=True, json_body={"is_member": "yes", "quota_remaining": 1}),
    Case("account-user-id-too-long", "PUT", "/v1/accounts/" + "u" * 201, 422, 4001,
         user="root", admin=True, json_body={"is_member": True, "quota_remaining": 1}),
    Case("account-user-id-control", "PUT", "/v1/accounts/a%0Ab", 422, 4001, user="root",
         admin=True, json_body={"is_member": True, "quota_remaining": 1}),
    Case("account-user-id-nul", "PUT", "/v1/accounts/a%00b", 422, 4001, user="root",
         admin=True, json_body={"is_member": True, "quota_remaining": 1}),
    Case("account-user-id-invalid-utf8", "PUT", "/v1/accounts/%FF", 422, 4001, user="root",
         admin=True, json_body={"is_member": True, "quota_remaining": 1}),
    # -- routes and methods -------------------------------------------------------------------
    Case("unknown-route", "GET", "/v1/../../etc/passwd", 404, 4004),
    Case("wrong-method", "DELETE", "/v1/tasks/{bob_task}", 405, 4005),
]


@pytest.fixture
def world(client: Client, db: Conn) -> dict[str, Any]:
    """alice (quota 5) and bob (quota 5, one task of his own)."""
    put_account(client, "alice", quota=5)
    put_account(client, "bob", quota=5)
    made = client("bob").post("/v1/tasks", json={"kind": "noop", "subtasks": [{"n": 1}]})
    assert made.status_code == 201, made.text
    return {"bob_task": made.json()["id"]}


@pytest.fixture
def server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """Log records at ERROR or above, from the API thread (an unexpected error is logged)."""
    caplog.set_level(logging.WARNING)
    records: list[logging.LogRecord] = []
    yield records
    records.extend(r for r in caplog.records if r.levelno >= logging.ERROR)


def _assert_error_shape(response: httpx.Response, status: int, code: int) -> None:
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert "Traceback" not in response.text
    body = response.json()
    assert set(body) == {"errorCode", "message", "details"}, body
    assert body["errorCode"] == code, body


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_request_gets_its_documented_error_and_writes_nothing(
    case: Case, world: dict[str, Any], client: Client, db: Conn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = table_snapshot(db)
    c = client(case.user, admin=case.admin, token=case.token)
    kwargs: dict[str, Any] = {"headers": case.headers}
    if case.content is not None:
        kwargs["content"] = case.content
    elif case.json_body is not None:
        kwargs["json"] = case.json_body
    if case.params is not None:
        kwargs["params"] = case.params
    response = c.request(case.method, case.path.format(**world), **kwargs)
    _assert_error_shape(response, case.status, case.code)
    assert table_snapshot(db) == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records]


def _raw_request(url: str, data: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send bytes as they are (httpx refuses to put NUL or raw bytes in a request line or
    header); return the status and the body.

    The answer is read while the request is still being sent: a server that refuses a large
    body answers early and closes, and the unread rest of the upload then resets the
    connection.
    """
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80),
                                  timeout=timeout) as sock:
        chunks: list[bytes] = []

        def read() -> None:
            try:
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except OSError:
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # An OSError: the server stopped reading; its answer is already on its way.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        reader.join(timeout)
        assert not reader.is_alive(), "no complete answer in time"
        received = b"".join(chunks)
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def _request_bytes(target: bytes, headers: list[bytes], body: bytes = b"",
                   method: bytes = b"POST") -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close",
             *headers]
    if body:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


RAW_BODY = json.dumps(VALID_BODY).encode()

# (id, request bytes minus the token, allowed statuses and codes). None as the code: the HTTP
# server itself refused a request that is not HTTP (400 before taskd sees it).
RAW_CASES: list[tuple[str, bytes, int, int | None]] = [
    ("query-raw-ff", _request_bytes(b"/v1/tasks?cursor=\xff", [b"{auth}"], method=b"GET"),
     400, None),
    ("query-escaped-ff", _request_bytes(b"/v1/tasks?cursor=%ff", [b"{auth}"], method=b"GET"),
     422, 4001),
    ("query-raw-nul-escaped", _request_bytes(b"/v1/tasks?kind=%00", [b"{auth}"], method=b"GET"),
     422, 4001),
    ("query-raw-nul", _request_bytes(b"/v1/tasks?kind=a\x00b", [b"{auth}"], method=b"GET"),
     400, None),
    ("query-invalid-utf8-name", _request_bytes(b"/v1/tasks?%ff%fe=1", [b"{auth}"],
                                               method=b"GET"), 422, 4001),
    ("path-raw-bytes", _request_bytes(b"/v1/tasks/\xff\xfe", [b"{auth}"], method=b"GET"),
     400, None),
    ("bearer-space-only", _request_bytes(b"/v1/tasks", [b"Authorization: Bearer  ",
                                                        b"Content-Type: application/json"],
                                         RAW_BODY), 401, 4011),
    ("idempotency-key-latin1", _request_bytes(
        b"/v1/tasks", [b"{auth}", b"Idempotency-Key: k\xe9y",
                       b"Content-Type: application/json"], RAW_BODY), 422, 4001),
    ("header-auth-raw-bytes", _request_bytes(b"/v1/tasks", [b"Authorization: Bearer \xff\xfe",
                                                            b"Content-Type: application/json"],
                                             RAW_BODY), 401, 4011),
    ("header-auth-nul", _request_bytes(b"/v1/tasks", [b"Authorization: Bearer a\x00b",
                                                      b"Content-Type: application/json"],
                                       RAW_BODY), 400, None),
    ("header-idempotency-raw-bytes", _request_bytes(
        b"/v1/tasks", [b"{auth}", b"Idempotency-Key: \xc3\xa9\xff",
                       b"Content-Type: application/json"], RAW_BODY), 422, 4001),
    ("header-content-length-huge", _request_bytes(
        b"/v1/tasks", [b"{auth}", b"Content-Type: application/json",
                       b"Content-Length: 99999999999999999999999999"]), 400, None),
    ("header-content-length-over-limit", _request_bytes(
        b"/v1/tasks", [b"{auth}", b"Content-Type: application/json",
                       b"Content-Length: %d" % (BODY_LIMIT + 1)]), 413, 4013),
    ("header-content-length-negative", _request_bytes(
        b"/v1/tasks", [b"{auth}", b"Content-Type: application/json",
                       b"Content-Length: -1"]), 400, None),
    ("chunked-body-over-limit", b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
     b"{auth}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
     + b"".join(b"%x\r\n" % (1024 * 1024) + b"a" * (1024 * 1024) + b"\r\n" for _ in range(3))
     + b"0\r\n\r\n", 413, 4013),
    ("content-type-raw-bytes", _request_bytes(
        b"/v1/tasks", [b"{auth}", b"Content-Type: application/json; charset=\xff"], RAW_BODY),
     201, 0),  # accepted: a charset parameter does not change how the body is read
]


@pytest.mark.parametrize(("name", "data", "status", "code"), RAW_CASES,
                         ids=[c[0] for c in RAW_CASES])
def test_raw_bytes_in_request_line_and_headers_are_refused_cleanly(
    name: str, data: bytes, status: int, code: int | None, world: dict[str, Any],
    api: RunningApi, api_settings: Any, db: Conn, caplog: pytest.LogCaptureFixture,
) -> None:
    from taskd.api import mint_token

    token = mint_token(api_settings.api, "alice", ttl=600).encode()
    before = table_snapshot(db)
    got, body = _raw_request(api.url, data.replace(b"{auth}", b"Authorization: Bearer " + token))
    assert got == status, (got, body[:300])
    assert b"Traceback" not in body
    if code is None:
        assert table_snapshot(db) == before
    elif status == 201:
        # The one accepted row: exactly one task more, nothing else touched but alice's quota.
        after = table_snapshot(db)
        assert after["tasks"][0] == before["tasks"][0] + 1
    else:
        payload = json.loads(body)
        assert payload["errorCode"] == code, payload
        assert table_snapshot(db) == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records]


def test_sql_metacharacters_in_data_are_stored_verbatim(client: Client, db: Conn) -> None:
    """Where a string is data (name, params, payload, Idempotency-Key), metacharacters are
    kept as written and nothing else happens."""
    put_account(client, "alice", quota=5)
    nasty = "'; DROP TABLE taskd.tasks; -- $1 %s %(x)s \\ \" ` ${x} {{x}}"
    response = client("alice").post(
        "/v1/tasks",
        json={"kind": "noop", "name": nasty, "params": {nasty: nasty},
              "subtasks": [{"x": nasty}]},
        headers={"Idempotency-Key": "k';--%s"},
    )
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["name"] == nasty and task["params"] == {nasty: nasty}
    row = db.execute("SELECT s.payload, t.idempotency_key FROM taskd.subtasks s "
                     "JOIN taskd.tasks t ON t.id = s.task_id WHERE t.id = %s",
                     (task["id"],)).fetchone()
    assert row == ({"x": nasty}, "k';--%s")
    assert db.execute("SELECT count(*) FROM taskd.tasks").fetchone() == (1,)


def test_numbers_beyond_64_bits_in_payloads_round_trip_exactly(
    client: Client, db: Conn
) -> None:
    """JSON numbers in payloads are data: jsonb keeps any precision; nothing is truncated."""
    put_account(client, "alice", quota=5)
    big = 2**70 + 1
    response = client("alice").post(
        "/v1/tasks", json={"kind": "noop", "subtasks": [{"n": big, "neg": -big}]})
    assert response.status_code == 201, response.text
    subtasks = client("alice").get(f"/v1/tasks/{response.json()['id']}/subtasks").json()
    assert subtasks["items"][0]["payload"] == {"n": big, "neg": -big}


def test_deep_but_parseable_nesting_is_accepted_or_refused_cleanly(
    client: Client, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """Nesting that Python can parse (a few hundred levels) must not reach PostgreSQL's stack
    limit as a 500: it is either stored or refused with 4001."""
    put_account(client, "alice", quota=5)
    for depth in (100, 500, 900):
        before = table_snapshot(db)
        text = '{"kind": "noop", "subtasks": [{"x": ' + _nested(depth) + "}]}"
        response = client("alice").post("/v1/tasks", content=text.encode(),
                                        headers={"Content-Type": "application/json"})
        assert response.status_code in (201, 400, 422), (depth, response.text[:300])
        if response.status_code != 201:
            assert response.json()["errorCode"] == 4001
            assert table_snapshot(db) == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("body", [
    {"kind": "noop", "subtasks": [{"n": 1}], "priority": True},
    {"kind": "noop", "subtasks": [{"n": 1}], "priority": "5"},
    {"kind": "noop", "subtasks": [{"n": 1}], "priority": 5.0},
    {"kind": "noop", "prompts": ["a"], "batch_size": "2"},
    {"kind": "noop", "prompts": ["a"], "batch_size": True},
], ids=["priority-true", "priority-text", "priority-float", "batch-size-text",
        "batch-size-true"])
def test_integers_of_the_wrong_json_type_are_refused_not_coerced(
    client: Client, db: Conn, body: dict[str, Any]
) -> None:
    """Regression: pydantic's lax mode turned `"priority": true` into priority 1 and created the
    task (201) — a wrong type must be 422, like `quota_remaining` already is."""
    put_account(client, "alice", quota=5)
    before = table_snapshot(db)
    _assert_error_shape(client("alice").post("/v1/tasks", json=body), 422, 4001)
    assert table_snapshot(db) == before


def test_user_id_path_that_is_not_utf8_is_refused_not_replaced(
    client: Client, db: Conn
) -> None:
    """Regression: PUT /v1/accounts/%FF created the account "\\ufffd" — the undecodable byte
    was silently replaced, so the account written was not the one asked for."""
    before = table_snapshot(db)
    response = client("root", admin=True).put(
        "/v1/accounts/%FF", json={"is_member": True, "quota_remaining": 1})
    _assert_error_shape(response, 422, 4001)
    assert table_snapshot(db) == before
