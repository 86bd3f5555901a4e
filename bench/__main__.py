"""``python -m bench <workload> [options]``; ``python -m bench --help`` lists the workloads."""

from __future__ import annotations

import argparse
from typing import Any

from bench import (
    api_submit,
    console,
    fleet,
    graphile,
    http_clients,
    notifications,
    peers,
    queues,
    soak,
    targets,
    task_end,
    taskd_workloads,
)
from bench.common import print_table, temp_database, write_json


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """taskd and its peers, throughput then latency, in one run; ratios taskd / peer, each
    within its round (the machine's speed moves between rounds more than the ratios do)."""
    tp: list[dict[str, Any]] = []
    skip_graphile = (graphile.missing() if args.graphile
                     else "graphile-worker skipped (--no-graphile)")
    if skip_graphile:
        print(skip_graphile)
    for r in range(1, args.repeat + 1):
        for p in (1, 2):
            with temp_database() as url:
                stats = taskd_workloads.drain(url, args.n, p, args.concurrency)
            tp.append({"round": r, "system": f"taskd ({p} proc, concurrency {args.concurrency})",
                       "n": args.n, **stats})
        tp.append({"round": r, **peers.pgqueuer_throughput(args.n, 2, 100)})
        if not skip_graphile:
            tp.append({"round": r, **graphile.throughput(args.n)})
        tp.append({"round": r, **peers.bare_batch(args.n)})
        tp.append({"round": r, **peers.taskd_sql_batch(args.n)})
        if args.procrastinate_n:
            tp.append({"round": r, **peers.procrastinate_throughput(args.procrastinate_n, 1, 10)})
    lat: list[dict[str, Any]] = []
    for r in range(1, args.repeat + 1):
        lat.append({"round": r, **taskd_workloads.latency(args.rate, args.seconds)["results"][0]})
        lat.append({"round": r, **peers.pgqueuer_latency(args.rate, args.seconds)})
        if args.procrastinate_n:
            lat.append({"round": r, **peers.procrastinate_latency(args.rate, args.seconds)})
        lat.append({"round": r, **peers.bare_listen_latency(args.rate, args.seconds)})
    taskd_2 = {row["round"]: row["per_s"] for row in tp
               if row["system"].startswith("taskd (2 proc")}
    for row in tp:
        row["taskd_2proc_vs_this"] = taskd_2[row["round"]] / row["per_s"]
    print_table(f"throughput ({args.repeat} round(s); ratios within each round)", tp)
    taskd_lat = {row["round"]: row for row in lat if row["system"] == "taskd"}
    for row in lat:
        mine = taskd_lat[row["round"]]
        row["taskd_p50_vs_this"] = mine["p50_ms"] / row["p50_ms"]
        row["taskd_p99_vs_this"] = mine["p99_ms"] / row["p99_ms"]
    print_table(f"latency at {args.rate:g}/s ({args.repeat} round(s); ratios within each round)",
                lat)
    met = targets.summary(tp, lat)
    print_table("issue 8's targets: taskd / peer in each round", met)
    return {"n": args.n, "throughput": tp, "latency": lat, "targets": met}


def ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """taskd's own SQL driven by the bare loop (no daemon) against the bare loop's schema."""
    table = []
    for _ in range(args.repeat):
        table.append(peers.taskd_sql_batch(args.n, args.connections, args.batch))
        table.append(peers.bare_batch(args.n))
    best = {kind: max(r["per_s"] for r in table if r["system"].startswith(kind))
            for kind in ("taskd's SQL", "bare")}
    for row in table:
        row["vs_bare_best"] = row["per_s"] / best["bare"]
    print_table(f"taskd's SQL without a daemon ({args.repeat} run(s) each)", table)
    return {"n": args.n, "results": table}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="workload", required=True)

    p = sub.add_parser("throughput", help="N noop subtasks drained by 1 and 2 daemons")
    p.add_argument("-n", type=int, default=100_000)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--concurrency", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=1)

    p = sub.add_parser("latency", help="enqueue-to-start at a steady rate, idle daemon")
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=10.0)

    p = sub.add_parser("growth", help="throughput with many finished rows in the table")
    p.add_argument("--history", type=int, nargs="+", default=[0, 1_000_000, 5_000_000])
    p.add_argument("-n", type=int, default=100_000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=2)

    p = sub.add_parser("external", help="lumina subtasks against the fake API")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--job-seconds", type=float, default=0.5)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--polling", type=float, default=0.1)

    p = sub.add_parser("http-clients", help="CPU per request: httpx, its transport, aiohttp")
    p.add_argument("--tasks", type=int, default=50)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--seconds", type=float, default=6.0)

    p = sub.add_parser("submit", help="taskd.submit_task batches and the HTTP API")
    p.add_argument("--tasks", type=int, default=50)
    p.add_argument("--per-task", type=int, default=1000)
    p.add_argument("--clients", type=int, nargs="+", default=[50, 200],
                   help="concurrent HTTP clients, one run each")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--per-request", type=int, default=1)
    p.add_argument("--users", type=int, default=None,
                   help="accounts (default: one per client of the largest count)")
    p.add_argument("--workers", type=int, default=1,
                   help="taskd api processes on one port (api.reuse_port)")
    p.add_argument("--baseline", default=None, metavar="REV",
                   help="also run the API of this git revision, alternating with this tree")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--http-only", action="store_true", help="skip the submit_task part")

    p = sub.add_parser("footprint", help="RSS and connections of one daemon")
    p.add_argument("-n", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--sleep-ms", type=int, default=200)

    p = sub.add_parser("peers", help="taskd vs PgQueuer, Procrastinate and bare loops")
    p.add_argument("-n", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=2000)
    p.add_argument("--procrastinate-n", type=int, default=5000,
                   help="Procrastinate drains at a few hundred/s; 0 skips it")
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--no-graphile", dest="graphile", action="store_false",
                   help="skip graphile-worker (run when node and npm are on PATH; installed "
                        "from npm into bench/.graphile-worker on first use)")

    p = sub.add_parser("ceiling", help="taskd's claim and completion SQL in the bare loop, no "
                       "daemon, against the bare loop: the schema's own ceiling")
    p.add_argument("-n", type=int, default=200_000)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--batch", type=int, default=1000,
                   help="rows a claim takes (the daemon claims 1,000 at concurrency 2,000)")
    p.add_argument("--repeat", type=int, default=2)

    p = sub.add_parser("task-end", help="the drain with and without task-end notifications")
    p.add_argument("-n", type=int, default=50_000)
    p.add_argument("--per-task", type=int, nargs="+", default=[1, 100])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)

    p = sub.add_parser("fleet", help="1..32 daemons on one PostgreSQL of its own: throughput,"
                       " PostgreSQL CPU, claims and lock waits per size; idle cost")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    # 20,000: a drain of 4-9 s on this machine, long against the ramp of a size's start
    # (10,000 drained in 2-4 s).
    p.add_argument("-n", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=10, help="per daemon")
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--per-task", type=int, default=10_000,
                   help="subtasks per task of the backlog (10,000: one task's counters for all)")
    p.add_argument("--sleep-ms", type=int, default=0,
                   help="sleep subtasks of this many ms instead of noops (0): work this machine"
                        " can carry at every size, the ideal rate reported beside the measured")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--warmup", type=int, default=0,
                   help="subtasks drained (and deleted) by each fleet before it is measured")

    p = sub.add_parser("soak", help="a steady offered load for minutes on a stock-settings "
                       "cluster of the bench's own (autovacuum on): latency drift, dead tuples, "
                       "claim index size, per interval; taskd and PgQueuer")
    p.add_argument("--rate", type=float, default=8000.0, help="offered subtasks a second")
    p.add_argument("--minutes", type=float, default=30.0, help="duration of each system's run")
    p.add_argument("--every", type=float, default=60.0, help="seconds between report rows")
    p.add_argument("--systems", nargs="+", choices=["taskd", "pgqueuer"],
                   default=["taskd", "pgqueuer"])
    p.add_argument("--daemons", type=int, default=2, help="taskd daemons (PgQueuer workers)")
    p.add_argument("--batch", type=int, default=100, help="items per submit_task / enqueue")
    p.add_argument("--concurrency", type=int, default=1000, help="per taskd daemon")
    p.add_argument("--table-settings", nargs="+", choices=["shipped", "stock"],
                   default=["shipped"],
                   help="taskd's per-table storage parameters as migration 0016 ships them, "
                        "or reset to PostgreSQL's defaults; both: one run each")
    p.add_argument("--reloptions", action="append", default=[], metavar="TABLE:K=V,...",
                   help="extra storage parameters for a taskd table, e.g. "
                        "subtasks:fillfactor=70 (repeatable)")
    p.add_argument("--history", type=int, default=0,
                   help="finished taskd subtasks in the table before the load starts")
    p.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                   help="a postgresql.conf line for the bench's cluster (default: stock)")
    p = sub.add_parser("console", help="the console's page latency with many finished "
                       "subtasks (taskd api as its own process)")
    p.add_argument("--subtasks", type=int, default=1_000_000)
    p.add_argument("--pending", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=20)

    p = sub.add_parser("notifications", help="task-end webhooks: the outbox's cost to the "
                       "drain when nothing fails, and deliveries/s to a local receiver")
    p.add_argument("-n", type=int, default=50_000)
    p.add_argument("--deliveries", type=int, default=5000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=4)
    p.add_argument("--max-connections", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=100)

    p = sub.add_parser("queues", help="one queue against many: the same backlog drained, and "
                       "what idle queues cost PostgreSQL (on a cluster of the bench's own)")
    p.add_argument("--counts", type=int, nargs="+", default=[1, 50], help="queue counts")
    p.add_argument("-n", type=int, default=100_000, help="noops in the backlog, split evenly")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=2000, help="total per daemon, split")
    p.add_argument("--idle-seconds", type=float, default=30.0)
    p.add_argument("--repeat", type=int, default=2)

    args = parser.parse_args(argv)
    w = args.workload
    if w == "console":
        data = console.console(args.subtasks, args.repeat, args.pending)
    elif w == "throughput":
        data = taskd_workloads.throughput(args.n, args.processes, args.concurrency, args.repeat)
    elif w == "latency":
        data = taskd_workloads.latency(args.rate, args.seconds)
    elif w == "growth":
        data = taskd_workloads.growth(args.history, args.n, args.processes, args.concurrency,
                                      args.repeat)
    elif w == "external":
        data = taskd_workloads.external_api(args.n, args.job_seconds, args.limit, args.polling)
    elif w == "http-clients":
        data = http_clients.http_clients(args.tasks, args.interval, args.seconds)
    elif w == "submit":
        data = {} if args.http_only else {
            "sql": taskd_workloads.submit_sql(args.tasks, args.per_task)}
        data["http"] = api_submit.submit_http(
            args.clients, args.seconds, args.per_request, args.users, workers=args.workers,
            baseline=args.baseline, rounds=args.rounds)
    elif w == "footprint":
        data = taskd_workloads.footprint(args.n, args.concurrency, args.sleep_ms)
    elif w == "fleet":
        data = fleet.fleet(args.sizes, args.n, args.concurrency, args.idle_seconds, args.repeat,
                           args.per_task, args.warmup, args.sleep_ms)
    elif w == "ceiling":
        data = ceiling(args)
    elif w == "queues":
        data = queues.queues(args.counts, args.n, args.processes, args.concurrency,
                             args.idle_seconds, args.repeat)
    elif w == "soak":
        settings = dict(item.split("=", 1) for item in args.pg_setting)
        data = soak.soak(args.rate, args.minutes, args.every, systems=args.systems,
                         daemons=args.daemons, batch=args.batch, concurrency=args.concurrency,
                         table_settings=args.table_settings, reloptions=args.reloptions,
                         pg_settings=settings, history=args.history)
    elif w == "task-end":
        data = task_end.task_end(args.n, args.per_task, args.processes, args.concurrency,
                                 args.repeat)
    elif w == "notifications":
        data = notifications.notifications(args.n, args.deliveries, args.processes,
                                           args.concurrency, args.repeat, args.max_connections,
                                           args.batch_size)
    else:
        data = compare(args)
    write_json(w, {"args": vars(args), **data})


if __name__ == "__main__":
    main()
