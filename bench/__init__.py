"""taskd's benchmark harness: ``python -m bench <workload> ...`` from the repository root.

Each run creates its own databases on the server (``BENCH_DATABASE_URL``, default
``postgresql://postgres@127.0.0.1:5432/postgres``), drops them afterwards, prints a table and
writes JSON under ``bench/results/``. See docs/benchmarks.md.
"""
