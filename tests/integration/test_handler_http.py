"""The http handler against a real HTTP server on loopback."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from taskd.handlers.clients import HttpClients
from taskd.queue.store import Store
from taskd.settings import QueueSettings
from taskd.types import Outcome
from tests.fixtures.contexts import Attempts, submit_and_claim

pytestmark = pytest.mark.anyio


class Server:
    """Routes: /echo (the request back as JSON), /text, /empty, /status/<code>, /slow."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = {"method": self.command, "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(body) if body else None}
                server.requests.append(seen)
                headers: dict[str, str] = {"Content-Type": "application/json"}
                if self.path == "/echo":
                    status, data = 200, json.dumps(seen).encode()
                elif self.path == "/text":
                    status, data = 200, b"plain words"
                    headers["Content-Type"] = "text/plain"
                elif self.path == "/empty":
                    status, data = 204, b""
                elif self.path == "/slow":
                    server.release.wait(10)
                    status, data = 200, b"{}"
                elif self.path.startswith("/status/"):
                    status = int(self.path.rsplit("/", 1)[1])
                    data = json.dumps({"message": f"you got {status}"}).encode()
                    if status == 429:
                        headers["Retry-After"] = "7"
                else:
                    status, data = 404, b""
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> Server:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.thread.join()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as s:
        yield s


async def run_http(
    store: Store, http: HttpClients, payload: dict[str, Any],
    settings: QueueSettings | None = None,
) -> Outcome | None:
    """Submit an http subtask, claim it and run it as a daemon worker does; what was
    reported for it."""
    claimed = await submit_and_claim(store, "http", payload)
    return await Attempts(store, http).run(claimed, settings)


async def test_a_2xx_json_answer_is_the_result(
    store: Store, http: HttpClients, server: Server
) -> None:
    outcome = await run_http(store, http, {
        "url": server.url + "/echo", "method": "put", "headers": {"X-Trace": "t1"},
        "size": 3,
    })
    assert outcome is not None and outcome.verdict == "completed"
    echoed = outcome.result
    assert echoed["method"] == "PUT" and echoed["path"] == "/echo"
    assert echoed["headers"]["x-trace"] == "t1"
    # Without "body", the payload less the control keys is the body.
    assert echoed["body"] == {"size": 3}


async def test_queue_settings_give_url_and_method_and_body_is_sent_as_given(
    store: Store, http: HttpClients, server: Server
) -> None:
    settings = QueueSettings(url=server.url + "/echo", method="PATCH")
    outcome = await run_http(store, http, {"body": [1, "two"]}, settings)
    assert outcome is not None
    assert outcome.result["method"] == "PATCH"
    assert outcome.result["body"] == [1, "two"]
    outcome = await run_http(store, http, {"method": "GET"}, settings)
    assert outcome is not None and outcome.result["body"] is None


async def test_text_and_empty_answers(
    store: Store, http: HttpClients, server: Server
) -> None:
    text = await run_http(store, http, {"url": server.url + "/text", "method": "GET"})
    assert text is not None
    assert text.result == {"status": 200, "text": "plain words"}
    empty = await run_http(store, http, {"url": server.url + "/empty"})
    assert empty is not None
    assert empty.verdict == "completed" and empty.result is None


async def test_a_4xx_fails_for_good_with_the_answer_in_the_error(
    store: Store, http: HttpClients, server: Server
) -> None:
    outcome = await run_http(store, http, {"url": server.url + "/status/404", "method": "GET"})
    assert outcome is not None and outcome.verdict == "failed"
    assert outcome.error == (
        f'HttpRejected: GET {server.url}/status/404 returned 404: {{"message": "you got 404"}}'
    )


@pytest.mark.parametrize("status", [500, 503, 408])
async def test_a_5xx_or_408_is_retried(
    store: Store, http: HttpClients, server: Server, status: int
) -> None:
    outcome = await run_http(store, http, {"url": f"{server.url}/status/{status}"})
    assert outcome is not None and outcome.verdict == "retry"
    assert outcome.error is not None
    assert outcome.error.startswith(f"HttpStatusError: POST {server.url}/status/{status}")
    assert outcome.failure is not None and outcome.failure.error_type == "HttpStatusError"


async def test_a_429_with_retry_after_waits_that_long_without_spending_the_attempt(
    store: Store, http: HttpClients, server: Server
) -> None:
    outcome = await run_http(store, http, {"url": server.url + "/status/429"})
    assert outcome is not None and outcome.verdict == "snooze"
    assert outcome.delay == 7 and outcome.failure is None


async def test_a_request_timeout_is_retried(
    store: Store, http: HttpClients, server: Server
) -> None:
    outcome = await run_http(store, http, {"url": server.url + "/slow", "timeout": 0.2})
    assert outcome is not None and outcome.verdict == "retry"
    assert outcome.error is not None and outcome.error.startswith("ReadTimeout")


async def test_an_unreachable_server_is_retried_then_failed_with_the_connection_error(
    store: Store, http: HttpClients
) -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = await run_http(store, http, {"url": f"http://127.0.0.1:{port}/x"})
    assert outcome is not None and outcome.verdict == "retry"
    assert outcome.failure is not None and outcome.failure.error_type == "ConnectError"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "PermanentError: no URL: the payload has no 'url' and queue 'standard' sets no url"),
        ({"url": "ftp://example.org/x"},
         "PermanentError: payload 'url' 'ftp://example.org/x' must be an http:// or https:// URL"),
        ({"url": "http://127.0.0.1/", "method": "BREW"},
         "PermanentError: payload 'method' must be one of GET, POST, PUT, PATCH, DELETE, "
         "got 'BREW'"),
        ({"url": "http://127.0.0.1/", "headers": {"a": 1}},
         "PermanentError: payload 'headers' must be an object of strings"),
        ({"url": "http://127.0.0.1/", "timeout": -1},
         "PermanentError: payload 'timeout' must be a number of seconds > 0, got -1"),
    ],
)
async def test_bad_payloads_fail_for_good_naming_the_key(
    store: Store, http: HttpClients, payload: dict[str, Any], message: str
) -> None:
    outcome = await run_http(store, http, payload)
    assert outcome is not None and outcome.verdict == "failed"
    assert outcome.error == message
