"""A PgBouncer of a test's own, on a free port of 127.0.0.1, in front of a PostgreSQL server.

Debian's ``pgbouncer`` package provides the binary (``.ci/run`` installs it). Without it the
tests that need it skip, except under ``CI=true``, where they fail. PgBouncer refuses to run as
root: under root it runs as ``postgres`` (the PostgreSQL package's user) or ``nobody``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.system.clusters import free_port
from tests.system.daemons import wait_for


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)),
        None)
    if found:
        return found
    message = "pgbouncer is missing: install Debian's pgbouncer package (.ci/run does)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("no unprivileged user to run pgbouncer as")


class PgBouncer:
    """PgBouncer in ``pool_mode`` (transaction by default) with ``pool_size`` server
    connections per database and user, forwarding every database name to the server of
    ``server_url``; clients authenticate as ``trust`` (the server decides). ``settings`` are
    extra lines of its ``[pgbouncer]`` section."""

    def __init__(self, server_url: str, *, pool_mode: str = "transaction", pool_size: int = 4,
                 **settings: Any) -> None:
        binary = pgbouncer_binary()
        server = conninfo_to_dict(server_url)
        self.user = str(server.get("user") or "postgres")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="taskd-pgbouncer-"))
        target = f"host={server.get('host', '127.0.0.1')} port={server.get('port', 5432)}"
        if server.get("password"):
            target += f" password={server['password']}"
        config = {
            "listen_addr": "127.0.0.1", "listen_port": str(self.port), "unix_socket_dir": "",
            "auth_type": "trust", "auth_file": str(self.dir / "users.txt"),
            "pool_mode": pool_mode, "default_pool_size": str(pool_size),
            "max_client_conn": "500", "logfile": str(self.dir / "pgbouncer.log"),
            "pidfile": str(self.dir / "pgbouncer.pid"),
            **{k: str(v) for k, v in settings.items()},
        }
        (self.dir / "users.txt").write_text(f'"{self.user}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            f"[databases]\n* = {target}\n\n[pgbouncer]\n"
            + "".join(f"{k} = {v}\n" for k, v in config.items()))
        run_as = _run_as()
        if run_as is not None:
            import pwd

            entry = pwd.getpwnam(run_as)
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            os.chmod(self.dir, 0o755)
        self._out = (self.dir / "stdout.log").open("wb")
        self.proc = subprocess.Popen([binary, str(self.dir / "pgbouncer.ini")],
                                     stdout=self._out, stderr=subprocess.STDOUT, user=run_as)
        try:
            wait_for(self._answers, timeout=20, message="pgbouncer to take connections")
        except BaseException:
            self.close()
            raise

    def url(self, dbname: str) -> str:
        """A connection string to ``dbname`` through this PgBouncer."""
        return make_conninfo(host="127.0.0.1", port=str(self.port), user=self.user,
                             dbname=dbname)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"pgbouncer exited {self.proc.returncode}:\n{self.log()}")
        try:
            # No startup options and no prepared statements: what a transaction pooler takes.
            with psycopg.connect(self.url("postgres"), connect_timeout=2,
                                 prepare_threshold=None) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # SIGTERM: PgBouncer's immediate shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()
        shutil.rmtree(self.dir, ignore_errors=True)
