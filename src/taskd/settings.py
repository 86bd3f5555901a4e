"""Settings: ``TASKD_*`` environment (nested with ``__``), then a TOML file, then defaults.

One :class:`Settings` object is built at start (:func:`load_settings`) and passed down; nothing
reads the environment later. Durations are seconds, floats allowed.

Over 400 lines on purpose: every setting, its default, its bounds and the cross-checks between
them in one place, so that one file answers "what can I set" (deploy/taskd.toml.example shows
the same with comments).
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from taskd.errors import ConfigError

QUEUE_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
# Runs of a subtask, the first included: attempts = 1 + retries. The design's 3 retries.
DEFAULT_MAX_ATTEMPTS = 4
# The largest a PostgreSQL jsonb value can be (taskd.limits refuses more).
MAX_PAYLOAD_BYTES_CEILING = 268_435_455
DEFAULT_CONFIG_PATH = Path("/etc/taskd/taskd.toml")

# DESIGN.md's per-queue defaults; a queue not named here takes QueueSettings' own defaults.
QUEUE_DEFAULTS: dict[str, dict[str, Any]] = {
    "standard": {"initial": 10, "max": 50, "step": 5, "scale_up_interval": 60.0,
                 "scale_down_interval": 180.0},
    "lumina": {"initial": 2, "max": 10, "step": 2, "scale_up_interval": 120.0,
               "scale_down_interval": 180.0, "timeout": 300.0, "polling_interval": 5.0,
               "max_polls": 60},
}

Seconds = float
# What sits between taskd and PostgreSQL: nothing (or a pooler in session mode), or a pooler in
# transaction mode, where a session's state does not outlive its transaction.
Pooler = Literal["none", "transaction"]
# The ends of a task that a notification target may ask to hear of.
NotifyEvent = Literal["failed", "completed", "cancelled"]


def _failed_only() -> list[NotifyEvent]:
    return ["failed"]


class RateLimit(NamedTuple):
    """At most ``starts`` subtasks of a queue start per window of ``period`` seconds."""

    starts: int
    period: int

    def __str__(self) -> str:
        unit = _PERIOD_UNITS.get(self.period)
        return f"{self.starts}/{unit}" if unit else f"{self.starts} per {self.period} s"


_PERIODS = {"s": 1, "m": 60, "h": 3600}
_PERIOD_UNITS = {seconds: unit for unit, seconds in _PERIODS.items()}
_RATE = re.compile(r"^\s*([+-]?\d+)\s*/\s*([smh])\s*$")
MAX_RATE_COUNT = 1_000_000


def parse_rate_limit(text: str) -> RateLimit:
    """``"10/s"``, ``"600/m"``, ``"5000/h"`` as a :class:`RateLimit`. Raises ``ValueError``
    naming what is wrong."""
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a rate like 10/s, 600/m or 5000/h "
                         "(starts per second, minute or hour)")
    count = int(match[1])
    if not 1 <= count <= MAX_RATE_COUNT:
        raise ValueError(f"{text!r}: the count must be 1..{MAX_RATE_COUNT} starts per window "
                         "(to stop a queue, pause it: taskd queues pause)")
    return RateLimit(count, _PERIODS[match[2]])


class QueueSettings(BaseModel):
    """One queue's concurrency, retry and handler options (``queues.<name>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="false: executors do not claim from this queue")
    initial: int = Field(10, ge=1, description="concurrency at start and the scaler's floor")
    max: int = Field(50, ge=1, description="the scaler's ceiling for this executor")
    step: int = Field(5, ge=1, description="how much one scaler decision moves the limit")
    scale_up_interval: Seconds = Field(60.0, gt=0)
    scale_down_interval: Seconds = Field(180.0, gt=0)
    cluster_max: int | None = Field(
        None, ge=1, description="most subtasks of this queue processing across all executors"
    )
    rate_limit: str | None = Field(
        None, description='most subtasks of this queue started in any one period across all '
        'executors: "10/s", "600/m" or "5000/h" (a sliding window of the database clock); '
        'unset: none',
    )
    timeout: Seconds = Field(300.0, gt=0, description="a handler running longer is cancelled")
    max_attempts: int = Field(
        DEFAULT_MAX_ATTEMPTS, ge=1, le=1000,
        description="runs of a subtask, the first included (attempts = 1 + retries)",
    )
    pending_timeout: Seconds = Field(
        600.0, ge=0, description="fail subtasks pending longer than this; 0 turns it off"
    )
    retry_base: Seconds = Field(1.0, gt=0, description="backoff is retry_base * 2^(attempt-1)")
    retry_max: Seconds = Field(300.0, gt=0, description="backoff cap")
    # Handler options (the lumina, http and photo handlers read them).
    base_url: str | None = None
    api_key: SecretStr | None = None
    submit_path: str = "/v1/jobs"
    status_path: str = "/v1/jobs/{job_id}"
    polling_interval: Seconds = Field(5.0, gt=0)
    max_polls: int = Field(60, ge=1)
    url: str | None = Field(None, description="the http handler's URL when the payload has none")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field(
        "POST", description="the http handler's method when the payload has none"
    )
    request_timeout: Seconds = Field(
        30.0, gt=0, description="one HTTP request of the http, lumina and model_pose12 handlers"
    )
    audit_url: str | None = Field(
        None, description="the content-audit endpoint the model_pose12 handler asks about "
        "each image (taskd.handlers.photo)",
    )
    audit_api_key: SecretStr | None = Field(
        None, description="sent to audit_url as Authorization: Bearer (not the api_key of "
        "base_url)",
    )
    groups: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, min_length=1,
        description="the executor groups that serve this queue; unset: every group",
    )
    notify_url: str | None = Field(
        None, max_length=2000,
        description="default webhook for this queue's tasks that name none of their own "
        "(`taskd migrate` writes it to taskd.notify_routes)",
    )
    notify_on: list[NotifyEvent] = Field(
        default_factory=_failed_only, min_length=1,
        description="which ends of a task notify_url hears of",
    )

    @field_validator("rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str | None) -> str | None:
        return None if value is None else str(parse_rate_limit(value))

    @property
    def rate(self) -> RateLimit | None:
        """``rate_limit`` parsed; None without one."""
        return None if self.rate_limit is None else parse_rate_limit(self.rate_limit)

    @model_validator(mode="after")
    def _check_bounds(self) -> QueueSettings:
        if self.initial > self.max:
            raise ValueError(f"initial ({self.initial}) must be <= max ({self.max})")
        if self.retry_base > self.retry_max:
            raise ValueError(
                f"retry_base ({self.retry_base}) must be <= retry_max ({self.retry_max})"
            )
        return self


SCHEDULE_NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,62}$"
# croniter's words for every 1, 7, 30, 365 days, every hour (@midnight is @daily).
CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def cron_problem(expr: object, timezone: object = "UTC") -> str | None:
    """What is wrong with a schedule's cron expression or time zone, or None.

    Accepted: 5 fields (minute hour day-of-month month day-of-week), 6 fields (the sixth is
    seconds: ``* * * * * *`` ticks every second) or an alias (``@hourly``, ``@daily``, ...).
    The time zone is an IANA name (``Europe/Paris``, ``UTC``).
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from croniter import croniter

    if not isinstance(expr, str) or not expr.strip() or len(expr) > 200:
        return f"cron expression {expr!r:.100} must be text of 1 to 200 characters"
    fields = expr.split()
    if fields[0].startswith("@"):
        if len(fields) != 1 or fields[0].lower() not in CRON_ALIASES:
            return (f"cron expression {expr!r} is not a known alias "
                    f"({', '.join(CRON_ALIASES)})")
    elif len(fields) not in (5, 6):
        return (f"cron expression {expr!r} has {len(fields)} fields; it needs 5 (minute hour "
                "day-of-month month day-of-week) or 6 (a sixth for seconds)")
    elif not croniter.is_valid(expr):
        return f"cron expression {expr!r} is not valid"
    if not isinstance(timezone, str) or not timezone or len(timezone) > 100:
        return f"time zone {timezone!r:.100} is not a time zone name"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"time zone {timezone!r} is unknown (an IANA name such as Europe/Paris or UTC)"
    return None


class ScheduleSettings(BaseModel):
    """One schedule (``schedules.<name>``): what to submit and when. Applied to the database
    when a daemon starts; ``taskd schedules`` changes it at run time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str = Field(description="5 fields, 6 with seconds last, or an alias such as @hourly")
    timezone: str = Field("UTC", description="IANA time zone the expression is read in")
    queue: str = Field("standard", pattern=QUEUE_NAME_PATTERN)
    kind: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")
    payloads: list[dict[str, Any]] = Field(
        default_factory=lambda: [dict[str, Any]()], min_length=1, max_length=1000,
        description="one subtask per payload, as submit's",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(0, ge=-1000, le=1000)
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1, le=1000)
    enabled: bool = Field(True, description="applied when the schedule is created; after "
                          "that, `taskd schedules pause|resume` decides")
    missed: Literal["skip", "catch_up"] = Field(
        "skip", description="ticks missed while no daemon ran: skip them, or catch up")
    catch_up: int = Field(1, ge=1, le=1000, description="with missed = catch_up: at most this "
                          "many of the latest missed ticks are created")

    @model_validator(mode="after")
    def _check_cron(self) -> ScheduleSettings:
        problem = cron_problem(self.cron, self.timezone)
        if problem is not None:
            raise ValueError(problem)
        return self


class ApiSettings(BaseModel):
    """The HTTP API's settings (``api.*``, ``TASKD_API__*``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    addr: str = "127.0.0.1:8080"
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    pool_size: int = Field(10, ge=1, le=100, description="database connections per API process")
    read_timeout: Seconds = Field(
        15.0, gt=0, description="a request, headers and body, must arrive within this many "
        "seconds of its first byte; else 408 and the connection is closed",
    )
    max_connections: int = Field(
        1000, ge=1, description="client connections served at once; one more is answered 503",
    )
    kinds: dict[str, str] = Field(
        default_factory=lambda: {"lumina": "lumina", "noop": "standard"},
        description="task kinds the API accepts, each with its default queue",
    )
    templates: dict[str, list[Annotated[str, Field(min_length=1, max_length=20_000)]]] = Field(
        default_factory=dict,
        description="a kind's template: the prompts a task of that kind is made of, one "
        "subtask each; its requests give only the variables for their {placeholders}",
    )

    @model_validator(mode="after")
    def _templates_of_accepted_kinds(self) -> ApiSettings:
        for kind, prompts in self.templates.items():
            if kind not in self.kinds:
                raise ValueError(f"templates.{kind}: {kind!r} is not one of the kinds the API "
                                 f"accepts (api.kinds: {', '.join(sorted(self.kinds))})")
            if not prompts:
                raise ValueError(f"templates.{kind} has no prompts")
        return self
    console: bool = Field(True, description="serve the operators' console under /console")
    console_secret: SecretStr | None = Field(
        None, description="key of the console's CSRF tokens; default: derived from jwt_secret "
        "(HS256). Set it when several API processes verify RS256 tokens",
    )
    reuse_port: bool = Field(
        False, description="listen with SO_REUSEPORT, so that several API processes share "
        "addr and the kernel spreads connections among them (deploy/systemd/taskd-api@.service)",
    )
    access_log: bool = Field(
        False, description="log one line per request (uvicorn.access, INFO): off by default, "
        "as its formatting and write were 3% of the API's CPU a request (docs/benchmarks.md); "
        "a proxy in front usually keeps one",
    )


class NotificationSettings(BaseModel):
    """Task-end webhooks (``notifications.*``, ``TASKD_NOTIFICATIONS__*``): what the database
    accepts (written by ``taskd migrate``) and how the dispatcher delivers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="false: this daemon runs no dispatcher")
    allow_http_private: bool = Field(
        False, description="accept plain http targets on loopback and private addresses "
        "(`taskd migrate` makes the database enforce it)",
    )
    operator_url: str | None = Field(
        None, max_length=2000,
        description="the operator's webhook: hears of every task's end in operator_on, in "
        "addition to the task's own target",
    )
    operator_on: list[NotifyEvent] = Field(default_factory=_failed_only, min_length=1)
    signing_key: SecretStr | None = Field(
        None, description="master key: each target's Standard Webhooks secret is derived from "
        "it and the target's URL (`taskd notifications secret URL` prints it)",
    )
    secrets: dict[str, SecretStr] = Field(
        default_factory=dict, description="explicit secrets (whsec_...) by target URL; they "
        "take precedence over the derived ones",
    )
    timeout: Seconds = Field(10.0, gt=0, description="one delivery's whole HTTP request")
    retry_for: Seconds = Field(
        86400.0, gt=0, description="a notification undelivered this long after its first "
        "attempt is dead",
    )
    retry_base: Seconds = Field(5.0, gt=0, description="backoff is retry_base * 2^(attempt-1)")
    retry_max: Seconds = Field(3600.0, gt=0, description="backoff cap")
    lease_timeout: Seconds = Field(
        60.0, gt=0, description="a claimed notification is due again after this, should its "
        "dispatcher die mid-delivery",
    )
    batch_size: int = Field(100, ge=1, le=10000, description="notifications claimed at once")
    max_connections: int = Field(
        20, ge=1, le=1000, description="deliveries in flight at once, per daemon",
    )
    poll_interval: Seconds = Field(
        1.0, gt=0, description="how often to look for due ones; when it is not shorter than "
        "the daemon's poll_interval, the daemon's one poll looks for them instead",
    )
    task_link: str | None = Field(
        None, description="the task's link in the payload, with {id}: e.g. "
        "https://taskd.example/v1/tasks/{id}; unset: the path /v1/tasks/{id}",
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> NotificationSettings:
        if self.retry_base > self.retry_max:
            raise ValueError(
                f"retry_base ({self.retry_base}) must be <= retry_max ({self.retry_max})"
            )
        # A claimed batch is delivered max_connections at a time, each within timeout: the
        # claim's lease must outlast that.
        rounds = -(-self.batch_size // self.max_connections)
        if rounds * self.timeout >= self.lease_timeout:
            raise ValueError(
                f"lease_timeout ({self.lease_timeout:g}) must be longer than "
                f"ceil(batch_size / max_connections) * timeout ({rounds * self.timeout:g})"
            )
        return self


def _default_executor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


class Settings(BaseSettings):
    """Every setting of taskd; see ``deploy/taskd.toml.example`` for the documented list."""

    model_config = SettingsConfigDict(
        env_prefix="TASKD_",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    database_url: SecretStr | None = Field(
        None, description="PostgreSQL URL; unset starts the embedded database"
    )
    embedded_dir: Path | None = Field(None, description="data directory of the embedded database")
    heartbeat_interval: Seconds = Field(5.0, gt=0)
    lease_timeout: Seconds = Field(60.0, gt=0)
    executor_dead_after: Seconds = Field(30.0, gt=0)
    poll_interval: Seconds = Field(1.0, gt=0)
    shutdown_grace: Seconds = Field(30.0, ge=0)
    final_writes_timeout: Seconds = Field(
        10.0, gt=0, description="at shutdown, how long the last outcomes, the given-back "
        "subtasks and the executor's status may take to write; then the daemon exits anyway",
    )
    scale_check_interval: Seconds = Field(10.0, gt=0)
    stats_interval: Seconds = Field(15.0, gt=0)
    rescue_interval: Seconds = Field(5.0, gt=0)
    poison_after: int = Field(
        3, ge=2, le=1000,
        description="a subtask whose executor crashed or froze this many times while running "
                    "it fails as a poison pill; one fewer and it runs alone",
    )
    retention: Seconds = Field(7 * 86400.0, gt=0, description="finished rows older are deleted")
    metrics_addr: str = "0.0.0.0:9464"
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    executor_id: str = Field(default_factory=_default_executor_id, min_length=1, max_length=200)
    executor_group: str = Field(
        "default", min_length=1, max_length=200,
        description="which queues this daemon serves: those whose groups name it, or name none",
    )
    database_pooler: Pooler = Field(
        "none", description="transaction: database_url goes through a pooler in transaction "
        "mode (PgBouncer): no prepared statements, no startup options, no LISTEN on it",
    )
    listen: bool = True
    listen_database_url: SecretStr | None = Field(
        None, description="a direct connection (not through a transaction pooler) for LISTEN; "
        "default database_url",
    )
    pool_size: int = Field(5, ge=2, le=100, description="database connections per daemon")
    max_payload_bytes: int = Field(
        1024 * 1024, ge=1, le=MAX_PAYLOAD_BYTES_CEILING,
        description="largest payload accepted; `taskd migrate` makes the database enforce it",
    )
    tracing: bool | None = Field(
        None, description="OpenTelemetry spans (the otel extra); unset: on when "
        "OTEL_TRACES_EXPORTER or OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set",
    )
    queues: dict[str, QueueSettings] = Field(
        default_factory=lambda: {name: QueueSettings(**d) for name, d in QUEUE_DEFAULTS.items()}
    )
    handlers: dict[str, str] = Field(
        default_factory=dict, description='extra handlers: {"kind": "module:function"}'
    )
    schedules: dict[str, ScheduleSettings] = Field(
        default_factory=dict, description="cron schedules, applied to the database at start"
    )
    schedule_check_interval: Seconds = Field(
        5.0, gt=0, le=60, description="the ticker looks at the schedules at least this often "
        "(and wakes for each schedule's next tick)",
    )
    schedule_grace: Seconds = Field(
        60.0, gt=0, description="a tick later than this is missed: skipped, or caught up per "
        "its schedule's missed policy",
    )
    api: ApiSettings = Field(default_factory=ApiSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)

    @field_validator("queues", mode="before")
    @classmethod
    def _queue_defaults(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        # The built-in queues are always there (a queue is turned off with enabled = false):
        # TASKD_QUEUES__STANDARD__MAX=80 must not make the lumina queue disappear.
        merged: dict[str, Any] = {name: dict(d) for name, d in QUEUE_DEFAULTS.items()}
        for name, options in value.items():
            if not isinstance(name, str) or not re.match(QUEUE_NAME_PATTERN, name):
                raise ValueError(f"queue name {name!r} must match {QUEUE_NAME_PATTERN}")
            if isinstance(options, dict):
                merged[name] = {**QUEUE_DEFAULTS.get(name, {}), **options}
            else:
                merged[name] = options
        return merged

    @field_validator("schedules")
    @classmethod
    def _schedule_names(cls, value: dict[str, ScheduleSettings]) -> dict[str, ScheduleSettings]:
        for name in value:
            if not re.match(SCHEDULE_NAME_PATTERN, name):
                raise ValueError(f"schedule name {name!r} must match {SCHEDULE_NAME_PATTERN}")
        return value

    @model_validator(mode="after")
    def _check_timings(self) -> Settings:
        # A lease must outlive the heartbeats that extend it, and an executor must miss more
        # than one heartbeat before it is declared dead.
        if self.heartbeat_interval >= self.lease_timeout:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat_interval:g}) must be shorter than "
                f"lease_timeout ({self.lease_timeout:g}) [TASKD_HEARTBEAT_INTERVAL, "
                "TASKD_LEASE_TIMEOUT]"
            )
        if self.executor_dead_after <= self.heartbeat_interval:
            raise ValueError(
                f"executor_dead_after ({self.executor_dead_after:g}) must be longer than "
                f"heartbeat_interval ({self.heartbeat_interval:g}) [TASKD_EXECUTOR_DEAD_AFTER, "
                "TASKD_HEARTBEAT_INTERVAL]"
            )
        return self

    @property
    def active_queues(self) -> dict[str, QueueSettings]:
        """The queues that run (``enabled``), whichever groups serve them."""
        return {name: q for name, q in self.queues.items() if q.enabled}

    @property
    def served_queues(self) -> dict[str, QueueSettings]:
        """The queues this executor claims from: enabled, and served by its group (a queue
        whose ``groups`` is unset is served by every group)."""
        return {name: q for name, q in self.active_queues.items()
                if q.groups is None or self.executor_group in q.groups}

    @field_validator("metrics_addr")
    @classmethod
    def _check_addr(cls, value: str) -> str:
        parse_addr(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_path()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def parse_addr(value: str) -> tuple[str, int]:
    """Split ``host:port``; raise ``ValueError`` naming what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port with a port from 0 to 65535")
    return host.strip("[]") or "0.0.0.0", int(port)


def config_path() -> Path | None:
    """The TOML file to read: ``TASKD_CONFIG``, else /etc/taskd/taskd.toml when it exists."""
    explicit = os.environ.get("TASKD_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"TASKD_CONFIG={explicit}: no such file")
        return path
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Build the settings or raise :class:`ConfigError` with one line naming the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from exc
    except ValueError as exc:  # TOML syntax errors, undecodable environment values
        raise ConfigError(f"invalid settings: {exc}") from exc
    except RecursionError as exc:  # a JSON value in the environment nested too deeply
        names = [name for name, value in os.environ.items()
                 if name.upper().startswith("TASKD_") and _too_deep(value)]
        raise ConfigError(f"invalid settings: {', '.join(names) or 'a JSON value'} is nested "
                          "too deeply") from exc


def _too_deep(value: str) -> bool:
    try:
        json.loads(value)
    except RecursionError:
        return True
    except ValueError:
        return False
    return False


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the setting and its environment variable."""
    lines = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if not path:  # a rule across top-level settings: the message names them
            lines.append(f"invalid settings: {message}")
            continue
        given = error.get("input")
        if isinstance(given, dict):
            # A rule across several settings of one table: no single variable to name.
            lines.append(f"invalid setting {path}: {message}")
            continue
        env = "TASKD_" + "__".join(str(part).upper() for part in error["loc"])
        shown = "" if given is None else f" (got {given!r})"
        lines.append(f"invalid setting {path} [{env}]: {message}{shown}")
    return "; ".join(lines)
