"""The database's own health, read for metrics and ``taskd status``: the statistics pass's one
cheap query over unfinished rows and executors, and the storage of taskd's tables (row versions,
sizes, vacuums) from the statistics views."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from taskd.queue.store import Store


@dataclass(frozen=True, slots=True)
class TableHealth:
    """One taskd table's storage: live and dead row versions (the statistics' estimates),
    heap size, its indexes' sizes, seconds since its last vacuum or autovacuum (since the
    server started when none ran since) and how many vacuums ran since the statistics began."""

    table: str
    live_tuples: int
    dead_tuples: int
    size_bytes: int
    vacuum_age_seconds: float
    vacuums: int
    indexes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StorageHealth:
    """``tables`` by name; ``connections``: this database's client sessions by state
    (``active``, ``idle``, ``idle in transaction``, ...; ``hidden`` for other roles' sessions
    when the reader lacks pg_read_all_stats)."""

    tables: dict[str, TableHealth]
    connections: dict[str, int]


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """What the metrics' stats collector reads in one query.

    ``depth``: queue -> status (ready, scheduled, processing) -> count, only where non-zero;
    ``oldest_pending``: queue -> age in seconds of its oldest ready subtask;
    ``executors``: status -> count; ``paused``: every known queue -> whether it is paused.
    """

    depth: dict[str, dict[str, int]]
    oldest_pending: dict[str, float]
    executors: dict[str, int]
    paused: dict[str, bool] = field(default_factory=dict)


async def stats_snapshot(store: Store) -> StatsSnapshot:
    """One cheap query over unfinished rows and executors; raises DatabaseError on failure."""
    rows = await store.fetch_rows("stats_snapshot", {})
    depth: dict[str, dict[str, int]] = {}
    oldest: dict[str, float] = {}
    executors: dict[str, int] = {}
    paused: dict[str, bool] = {}
    for r in rows:
        if r["kind"] == "executor":
            executors[r["status"]] = int(r["value"])
            continue
        if r["kind"] == "paused":
            paused[r["queue"]] = bool(r["value"])
            continue
        depth.setdefault(r["queue"], {})[r["status"]] = int(r["value"])
        if r["oldest_seconds"] is not None:
            oldest[r["queue"]] = max(0.0, float(r["oldest_seconds"]))
    return StatsSnapshot(depth, oldest, executors, paused)


async def tasks_waiting_on_dependencies(store: Store) -> dict[str, int]:
    """Queue -> unfinished tasks that still wait for another task to complete (submitted
    with ``after``); queues without any are absent. Raises DatabaseError on failure."""
    rows = await store.fetch_rows("tasks_waiting_on_dependencies", {})
    return {r["queue"]: int(r["waiting"]) for r in rows}


#: The counters per queue that SQL keeps (``taskd.queue_counters``), by name.
UNIQUE_DUPLICATES = "unique_duplicates"


async def queue_counters(store: Store, *, fold: bool = False) -> dict[str, dict[str, int]]:
    """Counter name (:data:`UNIQUE_DUPLICATES`) -> queue -> total since the schema began,
    cluster-wide. With ``fold`` (the daemons' statistics pass), the deltas that submissions
    inserted are folded into the totals first, a batch at a time; without it the read writes
    nothing (``taskd status``). Raises DatabaseError on failure."""
    rows = await store.fetch_rows("fold_queue_counters" if fold else "queue_counters", {})
    counters: dict[str, dict[str, int]] = {}
    for r in rows:
        counters.setdefault(r["counter"], {})[r["queue"]] = int(r["value"])
    return counters


CLAIM_INDEX = "subtasks_claim_idx"


async def storage_health(store: Store) -> StorageHealth:
    """One query over the statistics views and file sizes (no table scan); DatabaseError on
    failure."""
    rows = await store.fetch_rows("table_health", {})
    tables: dict[str, TableHealth] = {}
    indexes: dict[str, dict[str, int]] = {}
    connections: dict[str, int] = {}
    for r in rows:
        if r["kind"] == "table":
            tables[r["name"]] = TableHealth(
                table=r["name"], live_tuples=int(r["live_tuples"]),
                dead_tuples=int(r["dead_tuples"]), size_bytes=int(r["size_bytes"]),
                vacuum_age_seconds=max(0.0, float(r["vacuum_age_seconds"])),
                vacuums=int(r["vacuums"]),
            )
        elif r["kind"] == "index":
            indexes.setdefault(r["table_name"], {})[r["name"]] = int(r["size_bytes"])
        else:  # the session count shares the live_tuples column
            connections[r["name"]] = int(r["live_tuples"])
    for name, sizes in indexes.items():
        if name in tables:
            tables[name] = replace(tables[name], indexes=dict(sorted(sizes.items())))
    return StorageHealth(dict(sorted(tables.items())), connections)
