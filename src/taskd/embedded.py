"""The embedded default database: a PostgreSQL from the ``pgserver`` wheel.

Used when ``TASKD_DATABASE_URL`` is unset, so that the first ``taskd run`` needs nothing
installed. Its data lives in ``TASKD_EMBEDDED_DIR`` or the user's data directory; processes that
use the same directory share one server, which stops when the last of them exits.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from taskd.errors import ConfigError, DatabaseUnavailable

log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "taskd" / "pgdata"


def start_embedded(data_dir: Path | None = None) -> str:
    """Start (or join) the embedded server and return its connection URL (not migrated:
    :func:`taskd.queue.database.database_url` does that)."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root shells, containers).
            warnings.simplefilter("ignore")
            import pgserver  # an optional extra: taskd[embedded]
    except ImportError as exc:
        raise ConfigError(
            "TASKD_DATABASE_URL is not set and the embedded database is not installed: "
            "set TASKD_DATABASE_URL, or install taskd[embedded]"
        ) from exc
    path = (data_dir or default_data_dir()).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.get_server(path, cleanup_mode="stop")  # type: ignore[attr-defined]
    except Exception as exc:  # pgserver raises plain exceptions for its subprocess failures
        raise DatabaseUnavailable(
            f"could not start the embedded database in {path}: {exc}"
        ) from exc
    url: str = server.get_uri()
    log.info("embedded PostgreSQL in %s; connect with: psql '%s'", path, url)
    return url
