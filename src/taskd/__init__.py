"""taskd: a standalone executor daemon over a lease-based PostgreSQL queue."""

from taskd.errors import (
    ConfigError,
    DatabaseError,
    DatabaseRefused,
    DatabaseUnavailable,
    HandlerError,
    InvalidInput,
    PermanentError,
    RetryLater,
    SchemaError,
    TaskdError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DatabaseError",
    "DatabaseRefused",
    "DatabaseUnavailable",
    "HandlerError",
    "InvalidInput",
    "PermanentError",
    "RetryLater",
    "SchemaError",
    "TaskdError",
    "__version__",
]
