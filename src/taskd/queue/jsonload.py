"""Reading JSON columns without letting one unreadable value take the daemon down.

PostgreSQL accepts JSON nested far deeper than Python's decoder can follow (it raises
RecursionError). Such a value comes back as :class:`UnreadableJSON`, so that the subtask holding
it fails on its own, permanently, instead of the claim that fetched it crashing the executor.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.types.json import set_json_loads

from taskd.types import UnreadableJSON

_DECODER = json.JSONDecoder()


def tolerant_loads(data: str | bytes) -> Any:
    if data == b"{}":
        return {}  # the default payload, without the decoder
    try:
        # PostgreSQL sends JSON as UTF-8: decoding it here spares json.loads its encoding
        # detection.
        return _DECODER.decode(data.decode() if isinstance(data, bytes) else data)
    except RecursionError:
        return UnreadableJSON("JSON nested too deeply for Python to decode")


async def configure_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """Pool ``configure`` hook: json and jsonb columns decode with :func:`tolerant_loads`."""
    set_json_loads(tolerant_loads, conn)
