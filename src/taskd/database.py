"""Where the database is: the configured URL, or the embedded default."""

from __future__ import annotations

from taskd.embedded import start_embedded
from taskd.settings import Settings


def database_url(settings: Settings) -> str:
    """The URL to connect to; starts the embedded server when none is configured."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return start_embedded(settings.embedded_dir)


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        parts = conninfo_to_dict(url)
    except Exception:  # an unparsable URL is shown as nothing rather than leaked
        return "<unparsable database url>"
    if "password" in parts:
        parts["password"] = "***"
    return make_conninfo(**parts)  # type: ignore[arg-type]
