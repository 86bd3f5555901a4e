"""taskd's exceptions: one tree under :class:`TaskdError`.

```
TaskdError
├── ConfigError               settings that cannot be used (exit code 2)
├── InvalidInput              a submission or request that breaks a documented rule
├── SchemaError               the database schema does not match this code
│   ├── SchemaMissing         no taskd schema yet: run `taskd migrate`
│   ├── SchemaOutdated        migrations are missing: run `taskd migrate`
│   └── SchemaTooNew          the database was migrated by a newer taskd
├── DatabaseError             any other failure reported by PostgreSQL
│   ├── DatabaseUnavailable   the server cannot be reached, is full or starting: try again
│   └── DatabaseRefused       the server refuses this configuration (also a ConfigError)
├── LeaseLost                 this executor no longer holds the subtask's lease
├── HandlerError              raised by handlers to steer what happens to a subtask
│   ├── PermanentError        fail now, do not retry
│   ├── RetryLater            retry after ``delay`` seconds, not counted as an error
│   └── HandlerTimeout        the attempt ran out of time; retried like any error
├── AccountError              the caller's account does not allow the request (the API)
│   ├── AccountNotFound       the user has no account
│   ├── NotAMember            the account's membership is not active
│   └── QuotaExhausted        quota_remaining is too low
├── IdempotencyConflict       the Idempotency-Key was used for a different request
├── TaskNotFound              no task with that id
├── QueueNotFound             no queue of that name is configured or known to the database
├── TaskFinished              the task has already ended (nothing to cancel)
├── NothingToRetry            the task has no failed subtasks
├── ScheduleNotFound          no schedule with that name
└── ScheduleExists            a schedule with that name exists already
```

Callers match on types, never on message text. Database errors are translated in one place,
:mod:`taskd.queue.connection`, and chained with ``from``.
"""

from __future__ import annotations


class TaskdError(Exception):
    """Root of every exception that taskd raises on purpose."""


class ConfigError(TaskdError):
    """Settings that cannot be used; the CLI exits with code 2."""


class InvalidInput(TaskdError, ValueError):
    """Input that breaks a documented rule; nothing was written.

    ``field`` names the offending input when one can be named.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SchemaError(TaskdError):
    """The database schema does not match what this version of taskd expects."""


class SchemaMissing(SchemaError):
    """The database has no taskd schema."""


class SchemaOutdated(SchemaError):
    """The database lacks migrations that this version of taskd needs."""


class SchemaTooNew(SchemaError):
    """The database holds migrations that this version of taskd does not know."""


class DatabaseError(TaskdError):
    """PostgreSQL reported an error that taskd did not expect."""


class DatabaseUnavailable(DatabaseError):
    """PostgreSQL cannot be reached, the connection broke mid-query, or the server cannot take
    a connection now (no free slot, starting up, in recovery): worth trying again."""


class DatabaseRefused(DatabaseError, ConfigError):
    """The server refused the connection for a reason that trying again will not change: bad
    credentials, no such database, no permission to connect. ``sqlstate`` says which."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class LeaseLost(TaskdError):
    """A fenced write matched nothing: the lease was rescued and maybe claimed by another."""


class HandlerError(TaskdError):
    """Base of the exceptions that handlers raise to steer a subtask's outcome."""


class PermanentError(HandlerError):
    """The subtask fails now, whatever attempts remain."""


#: The longest delay :class:`RetryLater` takes: 30 days.
MAX_RETRY_LATER = 30 * 86400.0


class RetryLater(HandlerError):
    """Retry the subtask after ``delay`` seconds; the attempt is not counted as an error.

    Raises :class:`ValueError` unless ``delay`` is a number from 0 to 30 days (NaN, infinity
    or 1e300 would otherwise reach the database and fail the whole batch of outcomes).
    """

    def __init__(self, delay: float, message: str = "") -> None:
        if not 0 <= delay <= MAX_RETRY_LATER:  # False for NaN too
            raise ValueError(
                f"RetryLater delay must be from 0 to {MAX_RETRY_LATER:g} seconds, got {delay:g}"
            )
        super().__init__(message or f"retry in {delay:g}s")
        self.delay = delay


class HandlerTimeout(HandlerError, TimeoutError):
    """The attempt ran out of time (the queue's ``timeout``, or a handler's own limit such as
    lumina's ``max_polls``); the subtask is retried like after any other error."""


class AccountError(TaskdError):
    """The caller's account does not allow this request."""


class AccountNotFound(AccountError):
    """The user has no account (an admin creates it with ``PUT /v1/accounts/{user_id}``)."""


class NotAMember(AccountError):
    """The account exists but its membership is not active."""


class QuotaExhausted(AccountError):
    """The account has no quota left for this request."""


class IdempotencyConflict(TaskdError):
    """The Idempotency-Key already names a task created from a different request."""

    def __init__(self, message: str, *, task_id: int) -> None:
        super().__init__(message)
        self.task_id = task_id


class TaskNotFound(TaskdError):
    """No task has this id."""


class QueueNotFound(TaskdError):
    """No queue of that name: not in the settings, and no daemon has served it."""


class TaskFinished(TaskdError):
    """The task has already ended; ``status`` says how."""

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message)
        self.status = status


class NothingToRetry(TaskdError):
    """The task has no failed subtasks."""


class ScheduleNotFound(TaskdError):
    """No schedule has this name."""


class ScheduleExists(TaskdError):
    """A schedule with this name exists already (replace it to change it)."""
