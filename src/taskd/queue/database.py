"""Where the database is: the configured URL, or the embedded default, migrated."""

from __future__ import annotations

import logging

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from taskd.embedded import start_embedded
from taskd.queue.migrations import migrate_blocking, migrate_options
from taskd.settings import Settings

log = logging.getLogger(__name__)


def database_url(settings: Settings) -> str:
    """The URL to connect to. Without ``database_url`` set, starts (or joins) the embedded
    server and applies the migrations, so that the first run needs nothing else."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    url = start_embedded(settings.embedded_dir)
    for migration in migrate_blocking(url, **migrate_options(settings)):
        log.info("embedded database: applied migration %04d_%s", migration.version,
                 migration.name)
    return url


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    try:
        parts = conninfo_to_dict(url)
    except Exception:  # an unparsable URL is shown as nothing rather than leaked
        return "<unparsable database url>"
    if "password" in parts:
        parts["password"] = "***"
    return make_conninfo(**parts)  # type: ignore[arg-type]
