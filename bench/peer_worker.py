"""A peer queue's worker process: ``python -m bench.peer_worker pgqueuer|procrastinate URL``.

Prints ``ready`` once set up, then works until SIGTERM. The no-op job of each peer is the
equivalent of taskd's ``noop`` handler.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys


async def pgqueuer_worker(url: str, batch: int) -> None:
    import psycopg
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    qm = QueueManager(Queries(PsycopgDriver(conn)))

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, qm.shutdown.set)
    print("ready", flush=True)
    await qm.run(batch_size=batch)


async def procrastinate_worker(url: str, concurrency: int) -> None:
    os.environ["BENCH_PROCRASTINATE_URL"] = url
    from bench.peer_tasks import app

    async with app.open_async():
        print("ready", flush=True)
        await app.run_worker_async(concurrency=concurrency, wait=True,
                                   install_signal_handlers=True, delete_jobs="never")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=["pgqueuer", "procrastinate"])
    parser.add_argument("url")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    try:
        if args.system == "pgqueuer":
            asyncio.run(pgqueuer_worker(args.url, args.batch))
        else:
            asyncio.run(procrastinate_worker(args.url, args.concurrency))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
