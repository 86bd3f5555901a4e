"""Fake external APIs on loopback: an image-job API and a content-audit endpoint, one server.

The external services that taskd's ``lumina`` handler and the photo-platform profile
(:mod:`taskd.handlers.photo`, deploy/examples/photo-platform.toml) talk to, as a real HTTP
server that runs jobs by the clock. For tests, ``make run`` and the benchmark. In a test::

    with FakeApis(job_seconds=0.2, reject_marker="[unsafe]") as api:
        ...  # point a queue's base_url at api.url, its audit_url at api.audit_url
        assert api.stats().max_in_flight <= 2

Standalone: ``python -m taskd.testing.fake_apis --port 8099 --job-seconds 2`` (the older name
``python -m taskd.testing.fake_lumina`` runs the same server).

Endpoints:

- ``POST /v1/jobs`` ``{"input": {...}, "client_reference": "..."}`` → 201 ``{"id", "status"}``.
  An input with ``"reject": "<message>"`` gets 422 ``{"error": {"code": "invalid_input",
  "message": ...}}``. The input may set ``"seconds"`` (this job's duration) and
  ``"fail": "<code>"`` (this job ends failed with that code).
- ``GET /v1/jobs/<id>`` → ``{"id", "status": "running" | "done" | "failed", "output",
  "error"}``; 404 for an unknown id. A done job's ``output`` holds its ``image_url``.
- ``POST /v1/audit`` ``{"image_url": "...", "prompt": "..."}`` → 200 ``{"approved": true}``, or
  ``{"approved": false, "reason": ...}`` when ``reject_marker`` occurs in the image URL, in the
  prompt, or in the input of the job that made the image; 400 without an ``image_url``.
- ``GET /v1/stats`` → the counters of :class:`FakeApiStats` as JSON.

A job is in flight from its submission until its duration has passed, whether or not anyone
polls it. With ``transient_rate``, that fraction of all requests (audits too) get a 503 before
anything happens (nothing is recorded for them but the count). With ``failure_rate``, that
fraction of jobs end ``failed`` with code ``internal``. With ``api_key``, requests without
``Authorization: Bearer <api_key>`` get 401. With ``latency``, every answer is held back that
many seconds, as from a slow API.

Over 400 lines on purpose: one server, its two APIs and its standalone command, so that tests,
``make run`` and the benchmark drive exactly the same fake.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import random
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

# The server is aiohttp's: Python's http.server answered many pollers' bursts in turn and
# listened with a backlog of 5 (SYNs lost when many clients connected at once), and the
# benchmark of the lumina handler measured the fake instead of the handler.
LISTEN_BACKLOG = 128
JOBS_PATH = "/v1/jobs"
AUDIT_PATH = "/v1/audit"
STATS_PATH = "/v1/stats"
# Where the fake's images "are": .invalid never resolves (RFC 2606), so nothing fetches them.
IMAGE_BASE_URL = "https://lumina.invalid"
MAX_BODY = 1024 * 1024


@dataclass
class Job:
    id: str
    reference: str | None
    input: dict[str, Any]
    submitted_at: float
    ends_at: float
    fail_code: str | None

    @property
    def image_url(self) -> str:
        return f"{IMAGE_BASE_URL}/{self.id}.png"

    def view(self, now: float) -> dict[str, Any]:
        if now < self.ends_at:
            return {"id": self.id, "status": "running"}
        if self.fail_code is not None:
            return {"id": self.id, "status": "failed",
                    "error": {"code": self.fail_code, "message": f"job {self.id} failed"}}
        return {"id": self.id, "status": "done",
                "output": {"job_id": self.id, "image_url": self.image_url, "input": self.input}}


@dataclass
class FakeApiStats:
    """What the fake APIs saw. ``submissions`` counts accepted submissions per reference;
    ``audits`` counts audit requests answered, ``audit_rejections`` those not approved."""

    submissions: dict[str, int] = field(default_factory=dict)
    jobs: int = 0
    requests: int = 0
    polls: int = 0
    transient_errors: int = 0
    rejected: int = 0
    unauthorized: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    audits: int = 0
    audit_rejections: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "submissions": dict(self.submissions), "jobs": self.jobs, "requests": self.requests,
            "polls": self.polls, "transient_errors": self.transient_errors,
            "rejected": self.rejected, "unauthorized": self.unauthorized,
            "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
            "audits": self.audits, "audit_rejections": self.audit_rejections,
        }


class FakeApis:
    """The fake APIs' state and their server thread; a context manager that starts and stops
    it. ``reject_marker``: the audit rejects images whose URL, prompt or job input contain it
    (None: every image is approved)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        job_seconds: float = 2.0,
        failure_rate: float = 0.0,
        transient_rate: float = 0.0,
        api_key: str | None = None,
        seed: int | None = None,
        latency: float = 0.0,
        reject_marker: str | None = None,
    ) -> None:
        for name, rate in (("failure_rate", failure_rate), ("transient_rate", transient_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be from 0 to 1, got {rate}")
        if job_seconds < 0:
            raise ValueError(f"job_seconds must be >= 0, got {job_seconds}")
        if latency < 0:
            raise ValueError(f"latency must be >= 0, got {latency}")
        if reject_marker == "":
            raise ValueError("reject_marker must not be empty (None approves every image)")
        self.job_seconds = job_seconds
        self.latency = latency
        self.failure_rate = failure_rate
        self.transient_rate = transient_rate
        self.api_key = api_key
        self.reject_marker = reject_marker
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._images: dict[str, Job] = {}
        self._submissions: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._max_in_flight = 0
        self._ends: list[float] = []
        # Bound here, so that the URL is known (and a taken port refused) before start().
        self._socket = socket.create_server((host, port), backlog=LISTEN_BACKLOG)
        bound_host, bound_port = self._socket.getsockname()[:2]
        self._url = f"http://{bound_host!s}:{bound_port}"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._failed: BaseException | None = None

    @property
    def url(self) -> str:
        """The base URL: a queue's ``base_url``."""
        return self._url

    @property
    def audit_url(self) -> str:
        """The content-audit endpoint: a queue's ``audit_url``."""
        return self._url + AUDIT_PATH

    def start(self) -> FakeApis:
        """Serve in a background thread (an aiohttp server on its own event loop); returns
        self once it accepts connections."""
        if self._thread is None:
            self._started.clear()
            self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),),
                                            name="fake-apis", daemon=True)
            self._thread.start()
            self._started.wait()
            if self._failed is not None:
                self._thread.join()
                self._thread = None
                raise RuntimeError(f"the fake APIs did not start: {self._failed}")
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._thread is not None:
            assert self._loop is not None and self._stopping is not None
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join()
            self._thread = None
        self._socket.close()

    async def _serve(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            app = web.Application(client_max_size=MAX_BODY)
            app.router.add_route("*", "/{path:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.SockSite(runner, self._socket).start()
        except BaseException as exc:
            self._failed = exc
            self._started.set()
            raise
        self._started.set()
        try:
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_BODY:
            response = _json_response(413, _error("too_large", "body over 1 MiB"))
            response.force_close()
            return response
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, answer = self.answer(request.method, request.raw_path, headers, body)
        if self.latency:
            await asyncio.sleep(self.latency)  # a slow API: the answer is held back
        return _json_response(status, answer)

    def __enter__(self) -> FakeApis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stats(self) -> FakeApiStats:
        """A snapshot of the counters."""
        with self._lock:
            now = time.monotonic()
            return FakeApiStats(
                submissions=dict(self._submissions),
                jobs=len(self._jobs),
                requests=self._counts["requests"],
                polls=self._counts["polls"],
                transient_errors=self._counts["transient"],
                rejected=self._counts["rejected"],
                unauthorized=self._counts["unauthorized"],
                in_flight=self._in_flight(now),
                max_in_flight=self._max_in_flight,
                audits=self._counts["audits"],
                audit_rejections=self._counts["audit_rejections"],
            )

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The job as a poll would show it now, or None."""
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else job.view(time.monotonic())

    # -- requests (called from the server's thread) ------------------------------------------

    def _in_flight(self, now: float) -> int:
        # A min-heap of end times: ended jobs leave from the top, the rest are in flight.
        while self._ends and self._ends[0] < now:
            heapq.heappop(self._ends)
        return len(self._ends)

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """The status and JSON body for one request."""
        with self._lock:
            self._counts["requests"] += 1
            if self.api_key is not None and headers.get("authorization") != (
                f"Bearer {self.api_key}"
            ):
                self._counts["unauthorized"] += 1
                return 401, _error("unauthorized", "missing or wrong API key")
        if path == STATS_PATH and method == "GET":
            return 200, self.stats().as_json()
        with self._lock:
            if self.transient_rate and self._random.random() < self.transient_rate:
                self._counts["transient"] += 1
                return 503, _error("unavailable", "try again")
            if path == JOBS_PATH and method == "POST":
                return self._submit(body)
            if path.startswith(JOBS_PATH + "/") and method == "GET":
                self._counts["polls"] += 1
                job = self._jobs.get(path.removeprefix(JOBS_PATH + "/"))
                if job is None:
                    return 404, _error("not_found", "no such job")
                return 200, job.view(time.monotonic())
            if path == AUDIT_PATH and method == "POST":
                return self._audit(body)
            return 404, _error("not_found", f"no route {method} {path}")

    def _submit(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            request = json.loads(body or b"null")
        except ValueError:
            return 400, _error("invalid_request", "the body is not JSON")
        if not isinstance(request, dict) or not isinstance(request.get("input"), dict):
            return 400, _error("invalid_request", "expected {\"input\": {...}}")
        job_input: dict[str, Any] = request["input"]
        reference = request.get("client_reference")
        if reference is not None and not isinstance(reference, str):
            return 400, _error("invalid_request", "client_reference must be a string")
        if "reject" in job_input:
            self._counts["rejected"] += 1
            return 422, _error("invalid_input", str(job_input["reject"]))
        seconds = job_input.get("seconds", self.job_seconds)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            self._counts["rejected"] += 1
            return 422, _error("invalid_input", "seconds must be a number >= 0")
        fail_code = job_input.get("fail")
        if fail_code is None and self.failure_rate and self._random.random() < self.failure_rate:
            fail_code = "internal"
        now = time.monotonic()
        job = Job(
            id=f"job-{len(self._jobs) + 1}", reference=reference, input=job_input,
            submitted_at=now, ends_at=now + float(seconds),
            fail_code=None if fail_code is None else str(fail_code),
        )
        self._jobs[job.id] = job
        self._images[job.image_url] = job
        heapq.heappush(self._ends, job.ends_at)
        if reference is not None:
            self._submissions[reference] += 1
        # In-flight only grows at a submission, so measuring here catches every maximum.
        self._max_in_flight = max(self._max_in_flight, self._in_flight(now))
        return 201, {"id": job.id, "status": "running"}


    def _audit(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            request = json.loads(body or b"null")
        except ValueError:
            return 400, _error("invalid_request", "the body is not JSON")
        if not isinstance(request, dict) or not isinstance(request.get("image_url"), str):
            return 400, _error("invalid_request", "expected {\"image_url\": \"...\"}")
        prompt = request.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            return 400, _error("invalid_request", "prompt must be a string")
        self._counts["audits"] += 1
        url: str = request["image_url"]
        job = self._images.get(url)
        seen = {"image URL": url, "prompt": prompt or "",
                "job input": "" if job is None else json.dumps(job.input)}
        marker = self.reject_marker
        if marker is not None:
            for what, text in seen.items():
                if marker in text:
                    self._counts["audit_rejections"] += 1
                    return 200, {"approved": False,
                                 "reason": f"the {what} contains the marker {marker!r}"}
        return 200, {"approved": True}


# The names from before the audit endpoint joined the fake Lumina API.
FakeLumina = FakeApis
FakeLuminaStats = FakeApiStats


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _json_response(status: int, answer: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=json.dumps(answer).encode(),
                        content_type="application/json")


def main(argv: list[str] | None = None, *, prog: str = "python -m taskd.testing.fake_apis",
         label: str = "fake APIs") -> None:
    """Run the fake APIs until SIGINT or SIGTERM; the first line on stdout says where."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fake external APIs on loopback, for trying taskd without the real "
        "services: an image-job API whose jobs run by the clock (POST /v1/jobs, GET "
        "/v1/jobs/ID; what the lumina and model_pose12 handlers drive) and a content-audit "
        "endpoint (POST /v1/audit).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8099, help="port to listen on (8099; 0 = any)")
    parser.add_argument("--job-seconds", type=float, default=2.0,
                        help="how long each job runs (2.0)")
    parser.add_argument("--failure-rate", type=float, default=0.0,
                        help="fraction of jobs that end failed with code 'internal' (0)")
    parser.add_argument("--transient-rate", type=float, default=0.0,
                        help="fraction of requests answered 503 before anything happens (0)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' (default: no key)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the random failures")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds each answer is held back, as from a slow API (0)")
    parser.add_argument("--reject-marker", default=None,
                        help="the audit rejects images whose URL, prompt or job input contain "
                        "this text (default: it approves every image)")
    args = parser.parse_args(argv)
    try:
        api = FakeApis(
            host=args.host, port=args.port, job_seconds=args.job_seconds,
            failure_rate=args.failure_rate, transient_rate=args.transient_rate,
            api_key=args.api_key, seed=args.seed, latency=args.latency,
            reject_marker=args.reject_marker,
        )
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with api:
        print(f"{label} listening on {api.url}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
